"""Settings of the bootstrap policy (demo defaults; ``tiny`` / ``world`` override in profiles)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field

from prmforge.config import StageSettings

# Bump when training code changes in a way that changes the trained weights,
# so ``policy_model`` retrains instead of reusing a stale model.
POLICY_CODE_VERSION = "2"  # 2: the architecture setting (qwen2: Qwen2 pre-tokenisation, ChatML examples)


class PolicySettings(StageSettings):
    """``policy_model`` (and ``prm_base_model``): the world the policy learns, its size and calibration."""

    # world
    difficulty: str = Field("easy", description="world difficulty the policy is trained and calibrated on")
    n_train_problems: int = Field(20000, description="training problems (split 'train')")
    train_seed: int = Field(1000, description="world seed of the training problems")
    # tokenizer
    vocab_size: int = Field(768, description="BPE vocabulary size")
    tokenizer_problems: int = Field(3000, description="problems per difficulty the BPE is fitted on")
    # architecture
    architecture: Literal["llama", "qwen2"] = Field(
        "qwen2", description="'qwen2' (Qwen2.5-Math's architecture, Qwen2's digit-splitting tokenizer and ChatML "
        "chat template: the path a real Qwen policy takes) or 'llama' (whole-number tokens, plain world prompt; "
        "the tiny/real profiles' quick policy); see docs/world-policy.md")
    hidden_size: int = Field(192, description="hidden size (hidden_size / num_heads must be a head size "
                             "vLLM's CPU attention supports: 32, 64, 80, 96, 112, 128, ...)")
    intermediate_size: int = Field(576, description="MLP intermediate size")
    num_layers: int = Field(3, description="decoder layers")
    num_heads: int = Field(6, description="attention heads")
    max_seq_len: int = Field(2048, description="context in tokens (max_position_embeddings; RoPE, so a longer "
                             "context costs no training time); training examples longer than it are dropped")
    # optimisation
    train_steps: int = Field(800, description="optimizer steps (qwen2 192/6/576: 800 calibrates in the band, "
                             "docs/world-policy.md)")
    batch_size: int = Field(32, description="problems per optimizer step")
    learning_rate: float = Field(3e-3, description="peak AdamW learning rate")
    warmup_steps: int = Field(100, description="linear warmup steps")
    weight_decay: float = Field(0.01, description="AdamW weight decay")
    seed: int = Field(0, description="seed of initialisation and data order")
    num_threads: int = Field(1, description="torch CPU threads (part of determinism; 1 is fastest on a shared 2-core box)")
    log_every: int = Field(50, description="steps between logged training losses")
    # calibration
    calib_problems: int = Field(300, description="held-out problems sampled once each at calib_temperature")
    calib_seed: int = Field(2000, description="world seed of the calibration problems")
    calib_temperature: float = Field(1.0, description="sampling temperature of the calibration")
    max_new_tokens: int = Field(160, description="max new tokens of one calibration sample")
    sample_batch_size: int = Field(64, description="prompts per sampling batch")

    def config_hash(self) -> str:
        """Hash of every field that shapes the weights, plus the code version (the reuse key)."""
        shaping = self.model_dump(exclude={"calib_problems", "calib_seed", "calib_temperature",
                                           "max_new_tokens", "sample_batch_size", "log_every"})
        blob = json.dumps({"code": POLICY_CODE_VERSION, **shaping}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
