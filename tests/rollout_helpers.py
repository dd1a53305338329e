"""Shared fixtures of the rollout tests: a tiny policy and a seed-problem table."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from prmforge.schemas import SEED_PROBLEMS
from prmforge.world.generator import apply_op


def world_seed_table(n: int, dataset: str = "world-demo", seed: int = 5) -> pa.Table:
    """Seed problems of the built-in world, in the ``seed_problems`` schema."""
    from prmforge.world import generate_problems

    rows = [
        {"problem_id": f"{dataset}-{p.problem_id}", "dataset": dataset, "problem": p.problem, "answer": p.answer,
         "split": "train", "source_row": i, "meta": json.dumps(p.meta)}
        for i, p in enumerate(generate_problems(n, seed=seed))
    ]
    return pa.Table.from_pylist(rows, schema=SEED_PROBLEMS)


def tiny_policy(path: Path) -> Path:
    """A tiny random Qwen2 (+ tokenizer with a chat template) standing in for the bootstrap policy."""
    from prmforge.engines.tiny import build_tiny_qwen2

    if not (path / "model.safetensors").exists():
        build_tiny_qwen2(path)
    return path


def world_solution(meta: dict, slip_at: int | None = None, drop_last: bool = False) -> list[str] | None:
    """The steps of a world problem's solution; ``slip_at`` makes that step's result one too high (the first
    error), ``drop_last`` stops before the answer. None when an operation has no result."""
    cur, steps = int(meta["start"]), []
    for i, (op, n) in enumerate(meta["ops"]):
        new = apply_op(cur, op, int(n))
        if new is None:
            return None
        shown = new + 1 if i == slip_at else new
        steps.append(f"{cur} {op} {n} = {shown}.")
        cur = shown
    if drop_last:
        return steps[:-1] or None
    steps[-1] += f" The answer is {cur}."
    return steps
