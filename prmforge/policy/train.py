"""Train the bootstrap policy from scratch on gold world solutions, on the CPU.

The model is a plain ``LlamaForCausalLM`` (``architecture: llama``, the
default) or ``Qwen2ForCausalLM`` (``qwen2``: the architecture of Qwen2.5-Math,
biased q/k/v projections, tied embeddings, RoPE with theta 10,000, Qwen2's
tokenizer and ChatML chat template), 2,048 positions either way; the folder
holds only ``config.json``, ``generation_config.json``, ``model.safetensors``
and the tokenizer files, so ``AutoModelForCausalLM.from_pretrained`` (or vLLM)
loads it with no custom code. Examples are the prompt from
:class:`prmforge.prompts.PolicyPrompt` (the builder every sampler uses: in the
chat template when the tokenizer has one), the gold solution and EOS; loss is
taken on solution tokens only: the problem text is given at sampling time, so
capacity spent modelling it is wasted. The context only sets ``max_position_embeddings`` (RoPE needs no
position table), so 2,048 positions cost nothing while examples stay short.
Training runs a fixed number of steps (not a time budget) so the result is a
function of the settings alone.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from prmforge.policy.settings import PolicySettings
from prmforge.progress import ProgressLog
from prmforge.prompts import PolicyPrompt
from prmforge.tokenizer import ENDOFTEXT_TOKEN, save_tokenizer, train_tokenizer, world_corpus
from prmforge.world import generate_problems


@dataclass
class TrainResult:
    """Where the model went and how training went (the curve is logged to MLflow)."""

    path: Path
    num_parameters: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps_per_second: float = 0.0


def encode_examples(tok: PreTrainedTokenizerFast, settings: PolicySettings) -> list[tuple[list[int], int]]:
    """``(token ids, prompt length)`` of each training problem; over-long ones are dropped."""
    problems = generate_problems(settings.n_train_problems, settings.train_seed, settings.difficulty)
    prompt = PolicyPrompt("world", bootstrap_policy=True, chat_tokenizer=tok if tok.chat_template else None)
    prompts = [prompt(p.problem) for p in problems]
    solutions = [p.solution_text() for p in problems]
    p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    s_ids = tok(solutions, add_special_tokens=False)["input_ids"]
    out = []
    for a, b in zip(p_ids, s_ids, strict=True):
        ids = a + b + [tok.eos_token_id]
        if len(ids) <= settings.max_seq_len:
            out.append((ids, len(a)))
    if not out:
        raise ValueError(f"no training example fits max_seq_len={settings.max_seq_len}")
    return out


def build_model(tok: PreTrainedTokenizerFast, settings: PolicySettings) -> LlamaForCausalLM | Qwen2ForCausalLM:
    """A randomly initialised Llama or Qwen2 shaped by ``settings`` (head size must suit vLLM's CPU attention)."""
    shape = dict(
        vocab_size=len(tok),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=settings.max_seq_len,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if settings.architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**shape, rms_norm_eps=1e-5))
    return Qwen2ForCausalLM(Qwen2Config(**shape, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                        use_sliding_window=False, rms_norm_eps=1e-6))


def _batch(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    inp = torch.full((len(examples), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(examples), width), dtype=torch.long)
    lab = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (ids, plen) in enumerate(examples):
        t = torch.tensor(ids, dtype=torch.long)
        inp[i, : len(ids)] = t
        att[i, : len(ids)] = 1
        lab[i, plen : len(ids)] = t[plen:]
    return inp, att, lab


def epoch_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of index batches of similar length (less padding = more steps per second).

    Indices are shuffled, cut into pools of 16 batches, each pool sorted by
    length and cut into batches, and the batch order shuffled again.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def train_policy(
    settings: PolicySettings, out_dir: str | Path, log: Callable[[str], None] | None = None
) -> TrainResult:
    """Train a policy per ``settings`` and save it (HF format) to ``out_dir``."""
    log = log or (lambda _msg: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(settings.num_threads)
    try:
        random.seed(settings.seed)
        torch.manual_seed(settings.seed)
        qwen2 = settings.architecture == "qwen2"
        tok = train_tokenizer(world_corpus(settings.tokenizer_problems, qwen2=qwen2), settings.vocab_size, qwen2)
        examples = encode_examples(tok, settings)
        model = build_model(tok, settings)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"policy: {n_params} parameters, {len(examples)} examples, {settings.train_steps} steps")
        opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                weight_decay=settings.weight_decay, betas=(0.9, 0.98))

        def lr_at(step: int) -> float:
            if step < settings.warmup_steps:
                return (step + 1) / settings.warmup_steps
            frac = (step - settings.warmup_steps) / max(1, settings.train_steps - settings.warmup_steps)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        rng = random.Random(settings.seed)
        lengths = [len(ids) for ids, _ in examples]
        plan: list[list[int]] = []
        curve: list[tuple[int, float]] = []
        running = 0.0
        model.train()
        progress = ProgressLog("policy training", settings.train_steps, log)
        start = time.perf_counter()
        for step in range(settings.train_steps):
            if not plan:
                plan = epoch_batches(lengths, settings.batch_size, rng)
            idx = plan.pop()
            inp, att, lab = _batch([examples[i] for i in idx], tok.pad_token_id)
            loss = model(input_ids=inp, attention_mask=att, labels=lab).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running += loss.item()
            if (step + 1) % settings.log_every == 0 or step + 1 == settings.train_steps:
                n = (step % settings.log_every) + 1
                curve.append((step + 1, running / n))
                running = 0.0
                progress.update(step + 1, f"loss {curve[-1][1]:.4f}")
        seconds = time.perf_counter() - start
        model.eval()
        # Qwen2 stops at <|im_end|> or <|endoftext|>, as Qwen's instruct generation configs do.
        eos = [tok.eos_token_id, tok.convert_tokens_to_ids(ENDOFTEXT_TOKEN)] if qwen2 else tok.eos_token_id
        model.generation_config = GenerationConfig(
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=settings.max_new_tokens,
            eos_token_id=eos, pad_token_id=tok.pad_token_id, bos_token_id=None,
        )
        model.save_pretrained(str(out_dir), safe_serialization=True)
        save_tokenizer(tok, out_dir)
        return TrainResult(out_dir, n_params, curve, seconds, settings.train_steps / max(seconds, 1e-9))
    finally:
        torch.set_num_threads(prev_threads)
