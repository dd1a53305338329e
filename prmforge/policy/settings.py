"""Settings of the bootstrap policy (demo defaults; ``tiny`` / ``world`` override in profiles)."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, Field

# Bump when training code changes in a way that changes the trained weights,
# so ``policy_model`` retrains instead of reusing a stale model.
POLICY_CODE_VERSION = "1"


class PolicySettings(BaseModel):
    """What world the policy is trained on, its size, and how it is calibrated."""

    # world
    difficulty: str = Field("easy", description="world difficulty the policy is trained and calibrated on")
    n_train_problems: int = Field(20000, description="training problems (split 'train')")
    train_seed: int = Field(1000, description="world seed of the training problems")
    # tokenizer
    vocab_size: int = 768
    tokenizer_problems: int = Field(3000, description="problems per difficulty the BPE is fitted on")
    # architecture (LlamaConfig)
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 3
    num_heads: int = 4
    max_seq_len: int = 256
    # optimisation
    train_steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    num_threads: int = Field(1, description="torch CPU threads (part of determinism; 1 is fastest on a shared 2-core box)")
    log_every: int = 50
    # calibration
    calib_problems: int = Field(300, description="held-out problems sampled once each at calib_temperature")
    calib_seed: int = 2000
    calib_temperature: float = 1.0
    max_new_tokens: int = 160
    sample_batch_size: int = 64

    def config_hash(self) -> str:
        """Hash of every field that shapes the weights, plus the code version (the reuse key)."""
        shaping = self.model_dump(exclude={"calib_problems", "calib_seed", "calib_temperature",
                                           "max_new_tokens", "sample_batch_size", "log_every"})
        blob = json.dumps({"code": POLICY_CODE_VERSION, **shaping}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
