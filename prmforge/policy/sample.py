"""Sample the policy and judge each sample with the oracle.

Used by calibration and by the held-out world benchmark. Sampling is plain
``model.generate`` (KV-cached, left-padded batches, EOS stops a row) with
``top_k=0`` so temperature 1.0 means the model's own distribution, and
seeded per batch so a rerun reproduces the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prmforge.world import (
    WorldProblem,
    extract_answer,
    oracle_first_error,
    prompt_for,
    split_steps,
)


@dataclass
class JudgedSample:
    """One policy solution of one world problem with the oracle's verdict."""

    problem: WorldProblem
    text: str
    steps: list[str]
    first_error: int
    kind: str | None
    detail: str | None
    predicted: str | None
    final_answer_correct: bool
    finish_reason: str


def load_policy(path: str | Path):
    """``(model, tokenizer)`` from an HF folder, no custom code."""
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False)
    model.eval()
    return model, tok


def sample_texts(model, tok, prompts: list[str], temperature: float, max_new_tokens: int,
                 batch_size: int, seed: int) -> list[tuple[str, str]]:
    """``(completion text, finish reason)`` per prompt, in order."""
    out: list[tuple[str, str]] = []
    tok.padding_side = "left"
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed * 1_000_003 + start)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        new = gen[:, enc["input_ids"].shape[1] :]
        for row in new.tolist():
            finish = "stop" if tok.eos_token_id in row else "length"
            if tok.eos_token_id in row:
                row = row[: row.index(tok.eos_token_id)]
            out.append((tok.decode(row, skip_special_tokens=True), finish))
    return out


def sample_and_judge(model, tok, problems: list[WorldProblem], n_per_problem: int = 1,
                     temperature: float = 1.0, max_new_tokens: int = 160, batch_size: int = 64,
                     seed: int = 0) -> list[JudgedSample]:
    """Sample ``n_per_problem`` solutions per problem and judge every one."""
    expanded = [p for p in problems for _ in range(n_per_problem)]
    texts = sample_texts(model, tok, [prompt_for(p.problem) for p in expanded], temperature,
                         max_new_tokens, batch_size, seed)
    out = []
    for p, (text, finish) in zip(expanded, texts, strict=True):
        steps = split_steps(text)
        verdict = oracle_first_error(p, steps)
        predicted = extract_answer(text)
        out.append(JudgedSample(
            problem=p, text=text, steps=steps, first_error=verdict.first_error, kind=verdict.kind,
            detail=verdict.detail, predicted=predicted, final_answer_correct=predicted == p.answer,
            finish_reason=finish,
        ))
    return out
