"""A tiny random causal LM + tokenizer for tests and throughput benchmarks.

Why: tests and the training benchmark must run with no hub and without waiting
for the policy stage, yet exercise the real transformers code path (HF folder,
``AutoModel``, safetensors). The tokenizer deliberately lacks the step token, so
the PRM's "add token and resize embeddings" path is exercised too.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch


def build_tiny_backbone(
    folder: str | Path,
    texts: Iterable[str] = (),
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    vocab_size: int = 300,
    max_positions: int = 512,
    seed: int = 0,
    arch: str = "llama",
) -> Path:
    """Write a random causal LM (``arch``: llama or qwen2) and a byte-level BPE tokenizer to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|pad|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = list(texts) or ["Problem: Tom has 3 apples and buys 4 more. 3 + 4 = 7. The answer is 7."]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|eos|>")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    cfg = config_cls(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, pad_token_id=fast.pad_token_id,
                      eos_token_id=fast.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
