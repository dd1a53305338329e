"""Rollout generation: ``n`` sampled step-by-step solutions per seed problem.

Plain Python (no Dagster) so the asset, the CLI (``python -m
prmforge.rollouts_cli``) and the kill-and-resume tests run the same code. Work
is sharded by problems through :func:`prmforge.sharding.run_sharded`; the run
key hashes the settings, the engine identity (backend, model URI, dtype...)
and the input's content, so a rerun with the same inputs resumes and anything
else starts fresh. Sampling in every shard is seeded from ``(seed, shard
index)`` and the HF engine's samples do not depend on batch composition, so a
resumed run equals an uninterrupted one row for row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import Field

from prmforge.answers import grade
from prmforge.checks import CheckOutcome
from prmforge.config import StageSettings
from prmforge.engines.base import Engine, SamplingParams
from prmforge.schemas import register_schema
from prmforge.sharding import Progress, ShardExecutor, fingerprint, run_sharded, shard_seed
from prmforge.steps import resolve_separator, split_steps
from prmforge.storage import Storage

DATASET = "policy_rollouts"
ROLLOUTS_CODE_VERSION = "2"  # 2: finish_reason "skipped" and the skip_reason column

ROLLOUT_SCHEMA = register_schema(
    DATASET,
    pa.schema(
        [
            pa.field("rollout_id", pa.string(), nullable=False),
            pa.field("problem_id", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("sample_index", pa.int64(), nullable=False),
            pa.field("prompt", pa.string(), nullable=False),
            pa.field("steps", pa.list_(pa.string()), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("extracted_answer", pa.string()),
            pa.field("gold_answer", pa.string(), nullable=False),
            pa.field("correct", pa.bool_(), nullable=False),
            pa.field("prompt_tokens", pa.int64(), nullable=False),
            pa.field("completion_tokens", pa.int64(), nullable=False),
            pa.field("finish_reason", pa.string(), nullable=False),  # stop | length | error | skipped
            pa.field("truncated", pa.bool_(), nullable=False),  # hit max_tokens
            pa.field("error", pa.string()),  # why the engine failed this prompt (finish_reason == "error")
            # why the prompt was never run (finish_reason == "skipped"), e.g. "prompt longer than the model's
            # context (max 2,048 positions): 2,113 prompt tokens + max_tokens 160"; downstream stages skip the row
            pa.field("skip_reason", pa.string()),
        ]
    ),
)

class RolloutSettings(StageSettings):
    """``policy_rollouts``: how rollouts are sampled (demo defaults; profiles and run config override)."""

    n: int = Field(4, gt=0, description="rollouts per problem")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_tokens: int = Field(160, gt=0, description="max new tokens of one rollout")
    seed: int = Field(0, description="sampling seed (each shard derives its own)")
    stop: list[str] = Field(default_factory=list, description="stop strings (cut from the text)")
    prompt_template: str = Field(
        "auto", description="'auto' (world prompt for the bootstrap policy, else an instruct prompt), 'world', "
        "or a format string with {problem}")
    chat_template: bool | None = Field(
        None, description="wrap the prompt with the tokenizer's chat template; unset: for the embedded policy when "
        "its tokenizer has one (the qwen2 policy, trained in its ChatML template), never for other models")
    step_separator: str = Field("auto", description="'auto', 'world', 'paragraph' or a literal separator")
    shard_size: int = Field(64, gt=0, description="problems per shard")
    max_problems: int | None = Field(None, description="only the first N problems (by problem_id)")
    truncation_warn_rate: float = Field(0.2, ge=0, le=1, description="WARN check threshold")
    max_engine_error_share: float = Field(
        0.05, ge=0, le=1, description="contract: the largest share of rollouts the engine may fail "
        "(finish_reason 'error') before the blocking rollouts_contract stops labelling")
    mean_steps_min: float = Field(1.0, ge=0, description="contract: lowest acceptable mean steps per solution")
    mean_steps_max: float = Field(64.0, gt=0, description="contract: highest acceptable mean steps per solution "
                                  "(a separator that stopped matching shows up here)")

    def run_fingerprint(self) -> dict:
        """Fields that change the rows (check thresholds do not)."""
        return self.model_dump(exclude={"truncation_warn_rate", "max_engine_error_share", "mean_steps_min",
                                        "mean_steps_max"})


@dataclass
class RolloutRun:
    """One ``generate_rollouts`` call: the table, its statistics and what resuming saved."""

    table: pa.Table
    run_key: str
    shards_total: int
    shards_reused: int
    shards_computed: int
    elapsed_s: float
    completion_tokens_computed: int
    tokens_per_s: float
    stats: dict = field(default_factory=dict)

    def summary(self, n: int) -> str:
        """One log line: size, accuracy, pass@n, truncation and reuse."""
        st = self.stats
        return (f"{st['rollouts']} rollouts, accuracy {st['accuracy']:.3f}, pass@{n} {st[f'pass@{n}']:.3f}, "
                f"truncation {st['truncation_rate']:.3f}; {self.shards_reused}/{self.shards_total} shards reused")

    def metadata(self, n: int, backend: str, model: str) -> dict[str, Any]:
        """What the ``policy_rollouts`` materialisation reports (plain values; dicts become JSON)."""
        st = self.stats
        return {
            "rollouts": st["rollouts"], "problems": st["problems"], "accuracy": float(st["accuracy"]),
            "pass_at_n": float(st[f"pass@{n}"]), "n": n, "truncation_rate": float(st["truncation_rate"]),
            "finish_reasons": st["finish_reasons"], "skipped_prompts": st["skipped_prompts"],
            "skipped_rollouts": st["skipped_rollouts"],
            "steps_per_solution": round(float(st["steps_per_solution"]), 3),
            **({"skipped": st["skip_message"]} if st["skip_message"] else {}),
            "shards_total": self.shards_total, "shards_reused": self.shards_reused,
            "shards_computed": self.shards_computed,
            "elapsed_s": round(self.elapsed_s, 3), "tokens_per_s": round(self.tokens_per_s, 1),
            "completion_tokens_computed": self.completion_tokens_computed, "run_key": self.run_key,
            "backend": backend, "model": model,
        }


def problems_fingerprint(problems: pa.Table) -> str:
    cols = [problems.column(c).to_pylist() for c in ("problem_id", "problem", "answer")]
    return fingerprint(list(zip(*cols, strict=True)))


def select_problems(problems: pa.Table, settings: RolloutSettings) -> pa.Table:
    """Problems in a stable order (by ``problem_id``), optionally the first N."""
    problems = problems.sort_by("problem_id")
    if settings.max_problems is not None:
        problems = problems.slice(0, settings.max_problems)
    return problems


def rollout_rows(problem: dict, prompt: str, completions, separator: str) -> list[dict]:
    """The table rows of one problem's completions."""
    rows = []
    for j, c in enumerate(completions):
        text = c.text if c.finish_reason not in ("error", "skipped") else ""
        skipped = c.finish_reason == "skipped"
        pred, ok = grade(text, problem["answer"]) if text else (None, False)
        rows.append({
            "rollout_id": f"{problem['problem_id']}#{j}",
            "problem_id": problem["problem_id"],
            "dataset": problem["dataset"],
            "sample_index": j,
            "prompt": prompt,
            "steps": split_steps(text, separator) if text else [],
            "text": text,
            "extracted_answer": pred,
            "gold_answer": problem["answer"],
            "correct": bool(ok),
            "prompt_tokens": int(c.prompt_tokens),
            "completion_tokens": int(c.completion_tokens),
            "finish_reason": c.finish_reason,
            "truncated": c.finish_reason == "length",
            "error": None if skipped else c.error,
            "skip_reason": (c.error or "skipped by the engine") if skipped else None,
        })
    return rows


def skip_summary(table: pa.Table) -> dict:
    """Skipped prompts (never run, e.g. longer than the model's context): counts and a one-line message.

    ``message`` is what the UI shows, e.g. "17 prompts skipped (68 rollouts): prompt longer than the
    model's context (max 2,048 positions)"; ``reasons`` counts rollouts per reason (numbers dropped).
    """
    reasons = [r for r in table.column("skip_reason").to_pylist() if r is not None] \
        if "skip_reason" in table.column_names else []
    if not reasons:
        return {"skipped_rollouts": 0, "skipped_prompts": 0, "skip_reasons": {}, "message": ""}
    pids = {p for p, r in zip(table.column("problem_id").to_pylist(), table.column("skip_reason").to_pylist(),
                              strict=True) if r is not None}
    kinds: dict[str, int] = {}
    for r in reasons:
        kind = r.split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"skipped_rollouts": len(reasons), "skipped_prompts": len(pids), "skip_reasons": kinds,
            "message": f"{len(pids)} prompts skipped ({len(reasons)} rollouts): " + "; ".join(kinds)}


def _mean_steps(table: pa.Table) -> float:
    """Mean steps per solution over the rollouts that ran (skipped prompts left out)."""
    ran = [len(s or []) for s, r in zip(table.column("steps").to_pylist(), table.column("finish_reason").to_pylist(),
                                         strict=True) if r != "skipped"]
    return sum(ran) / len(ran) if ran else 0.0


def summarize(table: pa.Table, n: int) -> dict:
    """Accuracy, pass@n, truncation, finish-reason and skip counts of a rollout table.

    ``empty_steps`` counts rollouts that ran and produced no step (engine errors included);
    ``empty_answers`` counts the policy's empty answers apart: it ended its turn at once (``stop``, no
    text), which a chat policy may do on a prompt far from its training (a world policy on real GSM8K);
    skipped prompts are counted apart too (``skipped_rollouts``, ``skipped_prompts``, ``skip_message``).
    """
    rows = table.num_rows
    if rows == 0:
        return {"rollouts": 0, "problems": 0, "accuracy": 0.0, f"pass@{n}": 0.0, "truncation_rate": 0.0,
                "finish_reasons": {}, "empty_steps": 0, "empty_answers": 0, "skipped_rollouts": 0,
                "skipped_prompts": 0,
                "skip_reasons": {}, "skip_message": "", "usable_rollouts": 0, "steps_per_solution": 0.0}
    pids = table.column("problem_id").to_pylist()
    correct = table.column("correct").to_pylist()
    solved: dict[str, bool] = {}
    for p, c in zip(pids, correct, strict=True):
        solved[p] = solved.get(p, False) or bool(c)
    reasons: dict[str, int] = {}
    for r in table.column("finish_reason").to_pylist():
        reasons[r] = reasons.get(r, 0) + 1
    skips = skip_summary(table)
    no_step = [(t, r) for s, t, r in zip(table.column("steps").to_pylist(), table.column("text").to_pylist(),
                                         table.column("finish_reason").to_pylist(), strict=True)
               if not s and r != "skipped"]
    answers = sum(1 for t, r in no_step if r == "stop" and not t.strip())
    empty = len(no_step) - answers
    return {
        "rollouts": rows,
        "problems": len(solved),
        "accuracy": sum(correct) / rows,
        f"pass@{n}": sum(solved.values()) / len(solved),
        "truncation_rate": sum(table.column("truncated").to_pylist()) / rows,
        "finish_reasons": reasons,
        "empty_steps": empty,
        "empty_answers": answers,
        "skipped_rollouts": skips["skipped_rollouts"],
        "skipped_prompts": skips["skipped_prompts"],
        "skip_reasons": skips["skip_reasons"],
        "skip_message": skips["message"],
        "usable_rollouts": rows - skips["skipped_rollouts"] - empty - answers,
        "steps_per_solution": _mean_steps(table),
        "completion_tokens": sum(table.column("completion_tokens").to_pylist()),
    }


def rollout_checks(run: RolloutRun, problems: pa.Table, settings: RolloutSettings) -> list[CheckOutcome]:
    """``n_per_problem`` and ``steps_non_empty`` (blocking), ``truncation_rate`` (WARN).

    Skipped prompts (longer than the model's context) and empty answers (the policy ended its turn at once)
    are reported by ``steps_non_empty`` but only fail it when no rollout is left to label; text that yields
    no step (a separator that does not match) and engine errors fail it.
    """
    per: dict[str, list[int]] = {p: [] for p in select_problems(problems, settings).column("problem_id").to_pylist()}
    unknown = 0
    for p, j in zip(run.table.column("problem_id").to_pylist(), run.table.column("sample_index").to_pylist(),
                    strict=True):
        if p in per:
            per[p].append(j)
        else:
            unknown += 1
    bad = [p for p, js in per.items() if sorted(js) != list(range(settings.n))]
    st, rate = run.stats, float(run.stats["truncation_rate"])
    empty, skipped = st["empty_steps"], st["skipped_rollouts"]
    nothing_left = st["rollouts"] > 0 and st["usable_rollouts"] == 0  # skipped prompts pass unless nothing is left
    return [
        CheckOutcome("n_per_problem", not bad and unknown == 0, True, {
            "problems": len(per), "problems_wrong_count": len(bad), "unexpected_rows": unknown,
            "examples": bad[:10], "n": settings.n}),
        CheckOutcome("steps_non_empty", empty == 0 and not nothing_left, True, {
            **({"reason": f"{empty} rollouts ran and have no step" if empty else "no rollout left to label"}
               if empty or nothing_left else {}),
            "empty": empty, "empty_answers": st["empty_answers"], "errors": st["finish_reasons"].get("error", 0),
            "skipped_rollouts": skipped,
            "skipped_prompts": st["skipped_prompts"], "skip_reasons": st["skip_reasons"],
            **({"skipped": st["skip_message"]} if skipped else {})}, description=("; ".join(filter(None, [
                f"{empty} rollouts without steps" if empty else "",
                f"{st['empty_answers']} empty answers (the policy ended its turn at once)" if st["empty_answers"] else "",
                st["skip_message"],
                "no rollout left to label" if nothing_left else ""])) or None)),
        CheckOutcome("truncation_rate", rate <= settings.truncation_warn_rate, False, {
            "truncation_rate": rate, "threshold": settings.truncation_warn_rate}),
    ]


def generate_rollouts(
    storage: Storage,
    partition: str,
    problems: pa.Table,
    settings: RolloutSettings,
    engine_identity: dict,
    engine_factory: Callable[[], Engine],
    bootstrap_policy: bool,
    on_progress: Callable[[Progress, float], None] | None = None,
    *,
    prompt: Callable[[str], str],
    executor: ShardExecutor | None = None,
) -> RolloutRun:
    """Sample ``settings.n`` rollouts of every problem, resuming finished shards.

    ``engine_factory`` is only called if some shard still has to be computed,
    so a fully resumed run never loads a model; under a remote ``executor``
    (Ray actors) it is pickled and called once in each worker. ``on_progress(progress,
    tokens_per_s)`` is called after each computed shard. ``prompt`` turns a problem into the text sent to
    the engine (:class:`prmforge.prompts.PolicyPrompt`: template, then the chat template).
    """
    problems = select_problems(problems, settings)
    run_key = fingerprint({
        "code": ROLLOUTS_CODE_VERSION,
        "settings": settings.run_fingerprint(),
        "engine": engine_identity,
        "bootstrap": bootstrap_policy,
        "prompt": prompt("{problem}"),  # the whole template, chat wrapping included
        "input": problems_fingerprint(problems),
    })
    separator = resolve_separator(settings.step_separator, bootstrap_policy)
    items = problems.to_pylist()
    engine: Engine | None = None
    start = time.monotonic()

    def work(chunk: list[dict], index: int) -> pa.Table:
        nonlocal engine
        if engine is None:
            engine = engine_factory()
        prompts = [prompt(p["problem"]) for p in chunk]
        params = SamplingParams(n=settings.n, temperature=settings.temperature, top_p=settings.top_p,
                                max_tokens=settings.max_tokens, seed=shard_seed(settings.seed, index),
                                stop=tuple(settings.stop))
        results = engine.generate(prompts, params)
        rows: list[dict] = []
        for problem, text, comps in zip(chunk, prompts, results, strict=True):
            rows.extend(rollout_rows(problem, text, comps, separator))
        return pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA)

    def progress(p: Progress) -> None:
        if on_progress is not None:
            on_progress(p, p.extra["tokens_per_s"])

    try:
        result = run_sharded(storage, DATASET, partition, run_key, items, settings.shard_size, work,
                             ROLLOUT_SCHEMA, on_progress=progress, executor=executor,
                             token_column="completion_tokens")
    finally:
        if engine is not None:
            engine.close()
    elapsed = time.monotonic() - start
    tokens = result.tokens_computed
    return RolloutRun(
        table=result.table,
        run_key=run_key,
        shards_total=result.shards_total,
        shards_reused=result.shards_reused,
        shards_computed=result.shards_computed,
        elapsed_s=elapsed,
        completion_tokens_computed=tokens,
        tokens_per_s=tokens / elapsed if elapsed > 0 and tokens else 0.0,
        stats=summarize(result.table, settings.n),
    )
