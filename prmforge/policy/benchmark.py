"""The held-out world benchmark: ProcessBench-format samples of the policy, labelled by the oracle.

Problems come from the world's ``heldout`` slice (disjoint by content hash
from every ``train`` problem the policy or ``seed_problems`` sees) with their
own seed. Each problem is sampled several times at ``temperature``; every
sample is judged by the oracle (``label`` = first wrong step, -1 if none).
The table is balanced: up to ``size // 2`` fully correct samples and as
many erroneous ones, taking every right-answer-wrong-process sample first
(they are the cases outcome-based evaluation misses).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pyarrow as pa
from pydantic import Field

from prmforge.config import StageSettings
from prmforge.engines.base import Engine
from prmforge.policy.sample import JudgedSample, sample_and_judge
from prmforge.schemas import register_schema
from prmforge.world import generate_problems

WORLD_BENCHMARK = register_schema(
    "world_benchmark",
    pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("problem", pa.string(), nullable=False),
            pa.field("steps", pa.list_(pa.string()), nullable=False),
            pa.field("label", pa.int64(), nullable=False),  # first wrong step, -1 if all correct
            pa.field("final_answer_correct", pa.bool_(), nullable=False),
            pa.field("problem_id", pa.string(), nullable=False),
            pa.field("error_kind", pa.string()),  # arithmetic | logic | format | null
            pa.field("answer", pa.string(), nullable=False),  # gold final answer
            pa.field("predicted", pa.string()),  # the sample's final answer, null if none
            pa.field("meta", pa.string(), nullable=False),  # world meta JSON (rebuilds the problem)
        ]
    ),
)


class BenchmarkSettings(StageSettings):
    """``world_benchmark``: size and sampling of the held-out world benchmark."""

    n_problems: int = Field(200, description="held-out problems sampled")
    samples_per_problem: int = Field(4, description="samples drawn per problem")
    size: int = Field(300, description="target rows (half correct, half erroneous)")
    seed: int = Field(3000, description="world seed of the benchmark problems (split 'heldout')")
    temperature: float = Field(1.0, description="sampling temperature")
    difficulty: str | None = Field(None, description="None: the policy's difficulty")
    max_new_tokens: int = Field(160, description="max new tokens of one sample")
    sample_batch_size: int = Field(64, description="prompts per sampling batch")


def select_balanced(samples: list[JudgedSample], size: int, seed: int) -> list[JudgedSample]:
    """Up to ``size // 2`` correct and as many erroneous samples (duplicates dropped)."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for s in samples:
        key = (s.problem.problem_id, s.text)
        if key not in seen and s.steps:
            seen.add(key)
            unique.append(s)
    rng = random.Random(seed)
    correct = [s for s in unique if s.first_error == -1]
    rawp = [s for s in unique if s.first_error >= 0 and s.final_answer_correct]
    other_wrong = [s for s in unique if s.first_error >= 0 and not s.final_answer_correct]
    for group in (correct, rawp, other_wrong):
        rng.shuffle(group)
    k = min(size // 2, len(correct), len(rawp) + len(other_wrong))
    chosen = correct[:k] + (rawp + other_wrong)[:k]
    chosen.sort(key=lambda s: (s.problem.problem_id, s.text))
    return chosen


def to_table(samples: list[JudgedSample]) -> pa.Table:
    """Rows of the ``world_benchmark`` dataset."""
    rows = {name: [] for name in WORLD_BENCHMARK.names}
    counters: dict[str, int] = {}
    for s in samples:
        pid = s.problem.problem_id
        counters[pid] = counters.get(pid, 0) + 1
        rows["id"].append(f"{pid}-{counters[pid] - 1}")
        rows["problem"].append(s.problem.problem)
        rows["steps"].append(list(s.steps))
        rows["label"].append(int(s.first_error))
        rows["final_answer_correct"].append(bool(s.final_answer_correct))
        rows["problem_id"].append(pid)
        rows["error_kind"].append(s.kind)
        rows["answer"].append(s.problem.answer)
        rows["predicted"].append(s.predicted)
        rows["meta"].append(json.dumps(s.problem.meta, sort_keys=True))
    return pa.Table.from_pydict(rows, schema=WORLD_BENCHMARK)


def build_world_benchmark(engine: Engine, settings: BenchmarkSettings, difficulty: str,
                          prompt: Callable[[str], str]) -> tuple[pa.Table, dict]:
    """Sample (``prompt``: the policy's prompt builder), judge and balance; returns the table and summary counts."""
    problems = generate_problems(settings.n_problems, settings.seed, settings.difficulty or difficulty,
                                 split="heldout")
    samples = sample_and_judge(engine, problems, prompt, settings.samples_per_problem, settings.temperature,
                               settings.max_new_tokens, settings.seed)
    chosen = select_balanced(samples, settings.size, settings.seed)
    table = to_table(chosen)
    kinds: dict[str, int] = {}
    for s in chosen:
        if s.kind:
            kinds[s.kind] = kinds.get(s.kind, 0) + 1
    summary = {
        "sampled": len(samples),
        "rows": table.num_rows,
        "correct": sum(s.first_error == -1 for s in chosen),
        "erroneous": sum(s.first_error >= 0 for s in chosen),
        "right_answer_wrong_process": sum(s.first_error >= 0 and s.final_answer_correct for s in chosen),
        "error_kinds": kinds,
        "problems": len({s.problem.problem_id for s in chosen}),
    }
    return table, summary
