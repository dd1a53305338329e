"""The three labelling stages as plain functions: ``label_mc``, ``label_judge``, ``label_consensus``.

Plain Python (no Dagster), as :mod:`prmforge.rollouts` is for rollouts: the
assets in ``assets/labels.py`` only read their settings and resources, call
one of these and turn the result into metadata, MLflow figures and checks;
tests and scripts run the same code on a storage root of their own.

MC and LLM-judge work is sharded through :func:`prmforge.sharding.run_sharded`:
the run key hashes the settings, the engine or judge identity and the
input's content, so a rerun with the same inputs resumes and anything else
starts fresh. Engines are built on the first shard that needs one and closed
when the stage ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from prmforge.checks import CheckOutcome
from prmforge.engines.base import Engine
from prmforge.engines.factory import EngineConfig, make_engine
from prmforge.labeling.audit import AuditResult, audit
from prmforge.labeling.consensus import (
    CONSENSUS_SCHEMA,
    ConsensusResult,
    Validation,
    build_consensus,
    validate_consensus,
)
from prmforge.labeling.exports import BUILDERS, OPENRLHF, TRL, TRL_SOFT
from prmforge.labeling.judges import Judge, Judgement
from prmforge.labeling.mc import AdaptiveValue, EngineValue, MCItem, MCResult, default_grader, run_search
from prmforge.labeling.settings import ConsensusSettings, JudgeSettings, MCSettings
from prmforge.labeling.soft import MC_DERIVED_FIELDS, judge_identity, model_content_hash, with_mc_soft_columns
from prmforge.schemas import register_schema
from prmforge.sharding import LocalExecutor, Progress, ShardedResult, ShardExecutor, fingerprint, run_sharded
from prmforge.steps import resolve_separator
from prmforge.storage import Storage

MC = "mc_step_labels"
JUDGE = "judge_step_labels"
CONSENSUS = "consensus_labels"
EXPORTS = {TRL: "trl_export", TRL_SOFT: "trl_soft_export", OPENRLHF: "openrlhf_export"}  # dataset -> metadata key

# what each resumable shard holds; the finished table adds the derived columns (prmforge.labeling.soft)
MC_SHARD_SCHEMA = pa.schema([
    pa.field("rollout_id", pa.string(), nullable=False),
    pa.field("problem_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("steps", pa.list_(pa.string()), nullable=False),
    pa.field("gold_answer", pa.string()),
    pa.field("final_correct", pa.bool_(), nullable=False),
    pa.field("mc_mode", pa.string(), nullable=False),
    pa.field("k", pa.int64(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # ok | error | empty | skipped (prompt never ran)
    pa.field("first_error", pa.int64(), nullable=False),  # -1: no error (meaningful only when ok)
    pa.field("labels", pa.list_(pa.bool_()), nullable=False),  # up to and including the first error
    pa.field("probe_steps", pa.list_(pa.int64()), nullable=False),
    pa.field("probe_soft", pa.list_(pa.float64()), nullable=False),
    pa.field("probe_hard", pa.list_(pa.bool_()), nullable=False),
    pa.field("probe_k", pa.list_(pa.int64()), nullable=False),  # completions behind each probed value
    pa.field("completions", pa.int64(), nullable=False),
    pa.field("generated_tokens", pa.int64(), nullable=False),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("rounds", pa.int64(), nullable=False),
    pa.field("free_positive", pa.int64(), nullable=False),  # reuse: prefixes proven positive, never sampled
    pa.field("shared_probes", pa.int64(), nullable=False),  # reuse: probes answered by a sibling's estimate
    pa.field("detail", pa.string()),
])
MC_SCHEMA = register_schema(MC, pa.schema([*MC_SHARD_SCHEMA, *MC_DERIVED_FIELDS]))
# bumped when the shard schema changes, so shards written by an older version are never read back
MC_SHARD_VERSION = 3  # 3: free_positive, shared_probes

# what each resumable judge shard holds; the finished table adds judge_identity
JUDGE_SHARD_SCHEMA = pa.schema([
    pa.field("rollout_id", pa.string(), nullable=False),
    pa.field("problem_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("judge", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # ok | unparsed | abstain | error | skipped
    pa.field("first_error", pa.int64()),  # null unless status == ok
    pa.field("detail", pa.string()),
    pa.field("raw_output", pa.string()),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("completion_tokens", pa.int64(), nullable=False),
])
JUDGE_SCHEMA = register_schema(JUDGE, pa.schema([
    *JUDGE_SHARD_SCHEMA,
    pa.field("judge_identity", pa.string(), nullable=False),  # canonical JSON of what changes the verdicts
]))

register_schema(CONSENSUS, CONSENSUS_SCHEMA)

CONSENSUS_CHECKS = {
    "labels_match_steps": "len(labels) == len(steps) after dropping the steps after the first error",
    "no_label_after_first_negative": "a negative label is always the last label of its row",
    "ids_unique": "rollout_id is unique",
    "traces_to_one_rollout": "every row's rollout_id occurs exactly once in policy_rollouts",
}


def _number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else round(v, 4)


# ---------------------------------------------------------------------------
# mc_step_labels
# ---------------------------------------------------------------------------
@dataclass
class MCRun:
    """One ``label_mc`` call: the table and what the asset reports about it."""

    table: pa.Table
    run_key: str
    sharded: ShardedResult
    settings: MCSettings
    model: str
    executor: dict[str, Any] = field(default_factory=dict)  # where the shards ran (ShardExecutor.describe)

    @property
    def metrics(self) -> dict[str, float]:
        return mc_summary(self.table)

    def params(self, partition: str) -> dict[str, Any]:
        s = self.settings
        return {"mode": s.strategy, "k": s.k, "model": self.model, "partition": partition, "max_tokens": s.max_tokens}

    def metadata(self) -> dict[str, Any]:
        statuses = Counter(self.table.column("status").to_pylist())
        fe_hist = Counter(str(fe) for fe, st in zip(self.table.column("first_error").to_pylist(),
                                                    self.table.column("status").to_pylist(), strict=True)
                          if st == "ok")
        r = self.sharded
        return {
            "mode": self.settings.strategy, "k": self.settings.k, "model": self.model,
            **{k: _number(v) for k, v in self.metrics.items()},
            "status_counts": dict(statuses),
            "first_error_histogram": dict(sorted(fe_hist.items(), key=lambda kv: int(kv[0]))),
            "shards_total": r.shards_total, "shards_reused": r.shards_reused,
            "shards_computed": r.shards_computed, "elapsed_s": round(r.elapsed_s, 2), "run_key": self.run_key,
            **self.executor,
        }


def mc_rows(rows: list[dict[str, Any]], results: list[MCResult], s: MCSettings) -> pa.Table:
    """The ``mc_step_labels`` rows of some rollouts and their MC results."""
    out = []
    for row, r in zip(rows, results, strict=True):
        out.append({
            "rollout_id": row["rollout_id"], "problem_id": row["problem_id"], "dataset": row["dataset"],
            "prompt": row["prompt"], "steps": list(row["steps"] or []), "gold_answer": row.get("gold_answer"),
            "final_correct": bool(row.get("correct")), "mc_mode": s.strategy, "k": s.k, "status": r.status,
            "first_error": r.first_error, "labels": r.labels, "probe_steps": r.probe_steps,
            "probe_soft": r.probe_soft, "probe_hard": r.probe_hard, "probe_k": r.probe_k,
            "completions": r.completions,
            "generated_tokens": r.generated_tokens, "prompt_tokens": r.prompt_tokens, "rounds": r.rounds,
            "free_positive": r.free_positive, "shared_probes": r.shared_probes, "detail": r.detail or None,
        })
    return pa.Table.from_pylist(out, schema=MC_SHARD_SCHEMA)


def mc_summary(table: pa.Table) -> dict[str, float]:
    """Cost and outcome figures of an MC table (also used by the benchmark)."""
    rows = table.select(["status", "first_error", "completions", "generated_tokens", "probe_steps",
                         "free_positive", "shared_probes"]).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    n = max(len(ok), 1)
    return {
        "rollouts": float(len(rows)),
        "labelled": float(len(ok)),
        "completions": float(sum(r["completions"] for r in rows)),
        "generated_tokens": float(sum(r["generated_tokens"] for r in rows)),
        "completions_per_labelled_rollout": sum(r["completions"] for r in rows) / n,
        "tokens_per_labelled_rollout": sum(r["generated_tokens"] for r in rows) / n,
        "probes_per_labelled_rollout": sum(len(r["probe_steps"]) for r in ok) / n,
        # what reuse saved: prefixes proven without sampling, probes answered by a sibling rollout
        "free_positive_per_labelled_rollout": sum(r["free_positive"] for r in ok) / n,
        "shared_probes_per_labelled_rollout": sum(r["shared_probes"] for r in ok) / n,
        "error_share": sum(r["first_error"] >= 0 for r in ok) / n,
        "skipped": float(sum(r["status"] == "skipped" for r in rows)),
        "failed": float(sum(r["status"] not in ("ok", "skipped") for r in rows)),
    }


def problem_groups(rows: list[dict[str, Any]], shard_size: int) -> tuple[list[list[dict[str, Any]]], int]:
    """The rollouts grouped by problem (first-appearance order) and the groups per shard for ~``shard_size`` rollouts."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["problem_id"], []).append(r)
    per_group = len(rows) / max(len(groups), 1)
    return list(groups.values()), max(1, round(shard_size / per_group))


def label_mc(
    storage: Storage,
    partition: str,
    rollouts: pa.Table,
    settings: MCSettings,
    engine: EngineConfig,
    bootstrap_policy: bool,
    on_progress: Callable[[Progress], None] | None = None,
    engine_factory: Callable[[], Engine] | None = None,
    executor: ShardExecutor | None = None,
) -> MCRun:
    """Monte Carlo labels of every rollout, resuming finished shards.

    ``engine`` is the policy on its backend (its identity is part of the run
    key); the engine itself (``engine_factory``, default ``make_engine(engine)``)
    is built only if some shard still has to be computed, once per process
    that runs shards (``executor``: this one by default, or each Ray actor).
    ``on_progress`` sees ``extra["tokens_per_s"]`` (generated tokens).
    """
    s = settings
    separator = resolve_separator(s.step_separator, bootstrap_policy)
    rows = rollouts.to_pylist()
    run_key = fingerprint({
        "settings": s.run_fingerprint(), "engine": engine.identity(), "separator": separator,
        "shard_version": MC_SHARD_VERSION,
        "rollouts": fingerprint([(r["rollout_id"], r["prompt"], r["steps"], r.get("text"), r.get("gold_answer"),
                                  bool(r.get("correct")), bool(r.get("truncated", False))) for r in rows]),
    })
    grade = default_grader()
    built: list[Engine] = []

    units: list[Any] = rows
    size = s.shard_size
    if s.reuse:  # rollouts share evidence only within a shard: a shard holds whole problems
        units, size = problem_groups(rows, s.shard_size)

    def work(chunk: list[Any], index: int) -> pa.Table:
        if not built:  # under Ray: once per actor, on its copy of ``built``
            built.append(engine_factory() if engine_factory is not None else make_engine(engine))
        if s.reuse:
            chunk = [r for group in chunk for r in group]
        value = EngineValue(built[0], grade, k=s.k, max_tokens=s.max_tokens, temperature=s.temperature,
                            top_p=s.top_p, seed=s.seed, separator=separator, batch_prefixes=s.batch_prefixes)
        items = [MCItem(r["rollout_id"], r["prompt"], list(r["steps"] or []), str(r.get("gold_answer") or ""),
                        bool(r.get("correct")), final_known=not r.get("truncated", False),
                        text=r.get("text"), skip_reason=r.get("skip_reason")) for r in chunk]
        value_fn = AdaptiveValue(value.sample, s.k, s.first_wave) if s.adaptive else value
        return mc_rows(chunk, run_search(items, s.mode, value_fn, reuse=s.reuse, separator=separator,
                                         verify=s.verify), s)

    executor = executor or LocalExecutor()
    try:
        result = run_sharded(storage, MC, partition, run_key, units, size, work, MC_SHARD_SCHEMA, on_progress,
                             executor=executor, token_column="generated_tokens")
    finally:
        for e in built:
            e.close()
    provenance = {"seed": s.seed, "engine": engine.backend, "model": storage.ref(engine.model),
                  "model_hash": model_content_hash(engine.model)}
    table = with_mc_soft_columns(result.table, rows, provenance, MC_SCHEMA)
    return MCRun(table, run_key, result, s, engine.model, executor.describe())


# ---------------------------------------------------------------------------
# judge_step_labels
# ---------------------------------------------------------------------------
@dataclass
class JudgeRun:
    """One ``label_judge`` call; ``sharded`` is None for a judge that is not resumable (the calculator)."""

    table: pa.Table
    judge: str
    run_key: str | None = None
    sharded: ShardedResult | None = None
    executor: dict[str, Any] = field(default_factory=dict)  # where the shards ran (ShardExecutor.describe)

    @property
    def metrics(self) -> dict[str, float]:
        t = self.table
        statuses = Counter(t.column("status").to_pylist())
        fes = [fe for fe, st in zip(t.column("first_error").to_pylist(), t.column("status").to_pylist(),
                                    strict=True) if st == "ok"]
        return {
            "rollouts": float(t.num_rows),
            "verdicts_ok": float(statuses.get("ok", 0)),
            "skipped_prompts": float(statuses.get("skipped", 0)),
            "unparsed_share": (t.num_rows - statuses.get("ok", 0) - statuses.get("skipped", 0))
            / max(t.num_rows - statuses.get("skipped", 0), 1),
            "error_share": sum(fe >= 0 for fe in fes) / max(len(fes), 1),
        }

    def params(self, partition: str) -> dict[str, Any]:
        return {"judge": self.judge, "partition": partition}

    def metadata(self) -> dict[str, Any]:
        m = self.metrics
        out: dict[str, Any] = {
            "judge": self.judge, "rows": self.table.num_rows,
            "status_counts": dict(Counter(self.table.column("status").to_pylist())),
            "unparsed_share": round(m["unparsed_share"], 4), "error_share": round(m["error_share"], 4),
        }
        if self.sharded is not None:
            out.update({"shards_reused": self.sharded.shards_reused, "shards_computed": self.sharded.shards_computed,
                        "run_key": self.run_key, **self.executor})
        return out


def label_judge(
    storage: Storage,
    partition: str,
    rollouts: pa.Table,
    problems: pa.Table,
    settings: JudgeSettings,
    judge: Judge,
    executor: ShardExecutor | None = None,
) -> JudgeRun:
    """The judge's verdict on every rollout (sharded and resumable when ``judge.resumable``).

    Resumable judges run their shards on ``executor`` (this process by
    default); a remote executor gets a pickled copy of ``judge`` per worker,
    which builds its own engine on its first call.

    A judge that reads the problem never judges blind: a rollout whose
    ``problem_id`` is not in ``problems`` becomes an ``error`` row.
    """
    texts = dict(zip(problems.column("problem_id").to_pylist(), problems.column("problem").to_pylist(), strict=True))
    cols = ["rollout_id", "problem_id", "dataset", "steps"]
    rows = rollouts.select(cols + (["skip_reason"] if "skip_reason" in rollouts.column_names else [])).to_pylist()
    name = judge.name
    missing = Judgement("error", None, "problem_id not found in seed_problems")

    def work(chunk: list[dict[str, Any]], index: int) -> pa.Table:
        # a skipped prompt has nothing to judge; a judge without the problem text would judge blind:
        # record both, never guess
        known = [r for r in chunk if not r.get("skip_reason") and (not judge.needs_problem
                                                                    or r["problem_id"] in texts)]
        judged = judge.judge([texts.get(r["problem_id"], "") for r in known],
                             [list(r["steps"] or []) for r in known], settings)
        by_id = {r["rollout_id"]: v for r, v in zip(known, judged, strict=True)}
        verdicts = [by_id.get(r["rollout_id"], Judgement("skipped", None, r["skip_reason"])
                              if r.get("skip_reason") else missing) for r in chunk]
        return pa.Table.from_pylist([{
            "rollout_id": r["rollout_id"], "problem_id": r["problem_id"], "dataset": r["dataset"], "judge": name,
            "status": v.status, "first_error": v.first_error, "detail": v.detail or None,
            "raw_output": v.raw_output or None, "prompt_tokens": v.prompt_tokens,
            "completion_tokens": v.completion_tokens,
        } for r, v in zip(chunk, verdicts, strict=True)], schema=JUDGE_SHARD_SCHEMA)

    identity = judge_identity(judge.identity())

    def finished(table: pa.Table) -> pa.Table:
        column = pa.array([identity] * table.num_rows, pa.string())
        return table.append_column(JUDGE_SCHEMA.field("judge_identity"), column)

    if not judge.resumable:  # milliseconds: nothing to resume
        return JudgeRun(finished(work(rows, 0)), name)
    run_key = fingerprint({"settings": settings.run_fingerprint(), "judge": judge.identity(),
                           "rows": fingerprint([(r["rollout_id"], r["steps"]) for r in rows]),
                           "problems": fingerprint(sorted(texts.items()))})
    executor = executor or LocalExecutor()
    res = run_sharded(storage, JUDGE, partition, run_key, rows, settings.shard_size, work, JUDGE_SHARD_SCHEMA,
                      executor=executor)
    return JudgeRun(finished(res.table), name, run_key, res, executor.describe())


# ---------------------------------------------------------------------------
# consensus_labels
# ---------------------------------------------------------------------------
@dataclass
class ConsensusRun:
    """One ``label_consensus`` call: kept rows, the exports, the oracle audit and the checks."""

    table: pa.Table
    result: ConsensusResult
    audit: AuditResult
    validation: Validation
    settings: ConsensusSettings
    export_urls: dict[str, str]  # export dataset -> URL (prmforge.labeling.exports)
    judge: str
    modes: str
    ks: str

    @property
    def metrics(self) -> dict[str, float]:
        res, report = self.result, self.audit
        out: dict[str, float] = {"kept_share": res.kept_share, "kept": float(res.kept), "rollouts": float(res.total)}
        out.update({f"disagree_{k}": float(v) for k, v in res.breakdown.items()})
        out.update(report.flat_metrics())
        if report.target_met is not None:
            out["audit_target_met"] = float(report.target_met)
        return out

    def params(self, partition: str) -> dict[str, Any]:
        return {"judge": self.judge, "mc_mode": self.modes, "k": self.ks, "partition": partition}

    def metadata(self) -> dict[str, Any]:
        """Everything but the export URLs (``export_urls``), which the asset shows as links."""
        res, report = self.result, self.audit
        out: dict[str, Any] = {
            "rows": self.table.num_rows, "kept": res.kept, "kept_share": round(res.kept_share, 4),
            "rollouts": res.total,
            "disagreements": res.breakdown, "judge_status": res.judge_status,
            "mc_mode": self.modes, "k": self.ks, "judge": self.judge, "audit": report.as_dict(),
        }
        if not report.applicable:
            return {**out, "audit_skipped": report.reason}
        for name in ("mc", "judge", "consensus"):
            exact = getattr(report, name).exact
            out[f"audit_{name}_exact"] = round(exact, 4) if exact is not None else "n/a"
        out["audit_target_met"] = bool(report.target_met)
        if report.why_missed:
            out["audit_why_missed"] = report.why_missed
        return out

    def checks(self) -> list[CheckOutcome]:
        """The four blocking integrity checks (``CONSENSUS_CHECKS``) and the kept-share WARN."""
        v, s = self.validation, self.settings
        out = [CheckOutcome(name, not bad, True, {"violations": len(bad), "examples": bad[:10]})
               for name, bad in (("labels_match_steps", v.labels_match_steps),
                                 ("no_label_after_first_negative", v.label_after_negative),
                                 ("ids_unique", v.duplicate_ids), ("traces_to_one_rollout", v.untraceable))]
        share = self.result.kept_share
        out.append(CheckOutcome("kept_share_in_bounds", s.kept_share_min <= share <= s.kept_share_max, False,
                                {"kept_share": round(share, 4), "min": s.kept_share_min, "max": s.kept_share_max}))
        return out


def label_consensus(
    storage: Storage,
    partition: str,
    mc: pa.Table,
    judge: pa.Table,
    seed_problems: pa.Table,
    rollouts: pa.Table,
    settings: ConsensusSettings,
) -> ConsensusRun:
    """Keep the rollouts on which MC and the judge agree; write the exports; audit against the world oracle."""
    judge_names = ",".join(sorted(set(judge.column("judge").to_pylist())) or ["none"])
    res = build_consensus(mc, judge, judge_names)
    urls = {name: storage.write_dataset(name, BUILDERS[name](res.table), partition) for name in EXPORTS}
    report = audit(seed_problems, mc, judge, res.table, target=settings.audit_target)
    validation = validate_consensus(res.table, rollouts.column("rollout_id").to_pylist())
    return ConsensusRun(
        res.table, res, report, validation, settings, urls,
        judge_names, ",".join(sorted(set(mc.column("mc_mode").to_pylist()))),
        ",".join(map(str, sorted(set(mc.column("k").to_pylist())))),
    )
