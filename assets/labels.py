"""Step labels: ``mc_step_labels``, ``judge_step_labels`` and ``consensus_labels``.

Thin Dagster layer over ``prmforge.labeling``: Monte Carlo estimation through
the policy engine (sharded, resumable), a judge (calculator by default, or an
LLM through any engine backend), and consensus filtering with its blocking
checks, the TRL export and the audit against the world oracle.
"""

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    MetadataValue,
    Output,
    asset,
)

from assets.common import table_data_version, upstream_uri
from assets.partitions import dataset_partitions
from pipelines.automation import GPU_POOL, REMOTE_RETRY, SHARDED_OP_TAGS, on_new_data
from prmforge.engines.factory import make_engine
from prmforge.labeling.consensus import (
    CONSENSUS_SCHEMA,
    build_consensus,
    trl_parquet_bytes,
    validate_consensus,
)
from prmforge.labeling.mc import MCItem, MCResult, default_grader, run_search
from prmforge.labeling.settings import MCSettings
from prmforge.schemas import register_schema
from prmforge.sharding import Progress, fingerprint, run_sharded
from resources.engine import EngineResource
from resources.judge import JudgeResource, JudgeRow
from resources.mlflow import MLflowResource
from resources.ray import RayResource
from resources.settings import SettingsResource, stage_config
from resources.storage import StorageResource

MC = "mc_step_labels"
JUDGE = "judge_step_labels"
CONSENSUS = "consensus_labels"
TRL = "consensus_labels_trl"

MC_SCHEMA = register_schema(MC, pa.schema([
    pa.field("rollout_id", pa.string(), nullable=False),
    pa.field("problem_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("steps", pa.list_(pa.string()), nullable=False),
    pa.field("gold_answer", pa.string()),
    pa.field("final_correct", pa.bool_(), nullable=False),
    pa.field("mc_mode", pa.string(), nullable=False),
    pa.field("k", pa.int64(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # ok | error | empty
    pa.field("first_error", pa.int64(), nullable=False),  # -1: no error (meaningful only when ok)
    pa.field("labels", pa.list_(pa.bool_()), nullable=False),  # up to and including the first error
    pa.field("probe_steps", pa.list_(pa.int64()), nullable=False),
    pa.field("probe_soft", pa.list_(pa.float64()), nullable=False),
    pa.field("probe_hard", pa.list_(pa.bool_()), nullable=False),
    pa.field("completions", pa.int64(), nullable=False),
    pa.field("generated_tokens", pa.int64(), nullable=False),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("rounds", pa.int64(), nullable=False),
    pa.field("detail", pa.string()),
]))

JUDGE_SCHEMA = register_schema(JUDGE, pa.schema([
    pa.field("rollout_id", pa.string(), nullable=False),
    pa.field("problem_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("judge", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # ok | unparsed | abstain | error
    pa.field("first_error", pa.int64()),  # null unless status == ok
    pa.field("detail", pa.string()),
    pa.field("raw_output", pa.string()),
    pa.field("prompt_tokens", pa.int64(), nullable=False),
    pa.field("completion_tokens", pa.int64(), nullable=False),
]))

register_schema(CONSENSUS, CONSENSUS_SCHEMA)

CONSENSUS_CHECKS = {
    "labels_match_steps": "len(labels) == len(steps) after dropping the steps after the first error",
    "no_label_after_first_negative": "a negative label is always the last label of its row",
    "ids_unique": "rollout_id is unique",
    "traces_to_one_rollout": "every row's rollout_id occurs exactly once in policy_rollouts",
}


MCConfig = stage_config(MC)
JudgeConfig = stage_config(JUDGE)
ConsensusConfig = stage_config(CONSENSUS)


def _log_mlflow(context: AssetExecutionContext, mlflow: MLflowResource, stage: str, params: dict[str, Any],
                metrics: dict[str, float]) -> dict[str, Any]:
    """Log one MLflow run per materialisation; an unreachable server is reported, not fatal.

    The labels are already stored (and MC shards resumable), so losing the
    tracking server must not throw away the work: the error goes to the log
    and the metadata instead.
    """
    try:
        with mlflow.start_run(f"{stage}-{context.partition_key}",
                              tags={"stage": stage, "partition": context.partition_key,
                                    "dagster_run_id": context.run.run_id}) as run:
            mlflow.log_params(params)
            import mlflow as mlf

            mlf.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
            return {"mlflow_run_id": run.info.run_id}
    except Exception as exc:  # noqa: BLE001
        context.log.warning(f"MLflow logging failed for {stage}: {type(exc).__name__}: {exc}")
        return {"mlflow_error": f"{type(exc).__name__}: {exc}"[:300]}


# ---------------------------------------------------------------------------
# mc_step_labels
# ---------------------------------------------------------------------------
def _policy_model(context: AssetExecutionContext, engine: EngineResource) -> tuple[str, bool]:
    """The model to sample and whether it is the bootstrap policy."""
    if engine.model:
        return engine.model, False
    return upstream_uri(context, "policy_model"), True


def _mc_rows(rows: list[dict[str, Any]], results: list[MCResult], s: MCSettings) -> pa.Table:
    out = []
    for row, r in zip(rows, results, strict=True):
        out.append({
            "rollout_id": row["rollout_id"], "problem_id": row["problem_id"], "dataset": row["dataset"],
            "prompt": row["prompt"], "steps": list(row["steps"] or []), "gold_answer": row.get("gold_answer"),
            "final_correct": bool(row.get("correct")), "mc_mode": s.mode, "k": s.k, "status": r.status,
            "first_error": r.first_error, "labels": r.labels, "probe_steps": r.probe_steps,
            "probe_soft": r.probe_soft, "probe_hard": r.probe_hard, "completions": r.completions,
            "generated_tokens": r.generated_tokens, "prompt_tokens": r.prompt_tokens, "rounds": r.rounds,
            "detail": r.detail or None,
        })
    return pa.Table.from_pylist(out, schema=MC_SCHEMA)


def mc_summary(table: pa.Table) -> dict[str, float]:
    """Cost and outcome figures of an MC table (also used by the benchmark)."""
    rows = table.select(["status", "first_error", "completions", "generated_tokens", "probe_steps"]).to_pylist()
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
        "error_share": sum(r["first_error"] >= 0 for r in ok) / n,
        "skipped": float(sum(r["status"] == "skipped" for r in rows)),
        "failed": float(sum(r["status"] not in ("ok", "skipped") for r in rows)),
    }


@asset(
    partitions_def=dataset_partitions,
    group_name="labels",
    automation_condition=on_new_data(),
    pool=GPU_POOL,
    op_tags=SHARDED_OP_TAGS,
    retry_policy=REMOTE_RETRY,
    ins={"policy_rollouts": AssetIn()},
    description="Monte Carlo step labels per rollout: K completions from each probed step prefix through the "
    "policy engine (per_step or binary_search), MC first error, soft/hard values, completions and tokens spent.",
)
def mc_step_labels(
    context: AssetExecutionContext,
    config: MCConfig,
    policy_rollouts: pa.Table,
    settings: SettingsResource,
    storage: StorageResource,
    policy_engine: EngineResource,
    mlflow: MLflowResource,
    ray_cluster: RayResource,
) -> Output[pa.Table]:
    """Label every rollout of the partition; shards are resumable across killed runs (and may run on Ray)."""
    from prmforge.steps import resolve_separator

    s = settings.stage(MC, config)
    partition = context.partition_key
    model, bootstrap = _policy_model(context, policy_engine)
    separator = resolve_separator(s.step_separator, bootstrap)
    cfg = policy_engine.config(model)
    rows = policy_rollouts.to_pylist()
    run_key = fingerprint({
        "settings": s.model_dump(), "engine": cfg.identity(), "separator": separator,
        "rollouts": fingerprint([(r["rollout_id"], r["prompt"], r["steps"], r.get("text"), r.get("gold_answer"),
                                  bool(r.get("correct")), bool(r.get("truncated", False))) for r in rows]),
    })
    grade = default_grader()
    holder: dict[str, Any] = {}

    def work(chunk: list[dict[str, Any]], index: int) -> pa.Table:
        from prmforge.labeling.mc import EngineValue

        if "engine" not in holder:  # under Ray: once per actor, on its copy of ``holder``
            holder["engine"] = make_engine(cfg)
        value = EngineValue(holder["engine"], grade, k=s.k, max_tokens=s.max_tokens, temperature=s.temperature,
                            top_p=s.top_p, seed=s.seed, separator=separator, batch_prefixes=s.batch_prefixes)
        items = [MCItem(r["rollout_id"], r["prompt"], list(r["steps"] or []), str(r.get("gold_answer") or ""),
                        bool(r.get("correct")), final_known=not r.get("truncated", False),
                        text=r.get("text"), skip_reason=r.get("skip_reason")) for r in chunk]
        return _mc_rows(chunk, run_search(items, s.mode, value), s)

    def progress(p: Progress) -> None:
        context.log.info(f"{MC}/{partition}: shard {p.shards_done}/{p.shards_total}, rollouts "
                         f"{p.items_done}/{p.items_total}, {p.extra['tokens_per_s']:.0f} tokens/s, "
                         f"eta {p.eta_s or 0:.0f}s")

    executor = ray_cluster.executor()
    try:
        result = run_sharded(storage.get(), MC, partition, run_key, rows, s.shard_size, work, MC_SCHEMA, progress,
                             executor=executor, token_column="generated_tokens")
    finally:
        if "engine" in holder:
            holder["engine"].close()
    table = result.table
    summary = mc_summary(table)
    statuses = Counter(table.column("status").to_pylist())
    fe_hist = Counter(str(r) for r, st in zip(table.column("first_error").to_pylist(),
                                              table.column("status").to_pylist(), strict=True) if st == "ok")
    tracked = _log_mlflow(context, mlflow, MC, {"mode": s.mode, "k": s.k, "model": model, "partition": partition,
                                                "max_tokens": s.max_tokens}, summary)
    return Output(table, data_version=table_data_version(table), metadata={
        "mode": s.mode, "k": s.k, "model": model,
        **{k: (int(v) if float(v).is_integer() else round(v, 4)) for k, v in summary.items()},
        "status_counts": MetadataValue.json(dict(statuses)),
        "first_error_histogram": MetadataValue.json(dict(sorted(fe_hist.items(), key=lambda kv: int(kv[0])))),
        "shards_total": result.shards_total, "shards_reused": result.shards_reused,
        "shards_computed": result.shards_computed, "elapsed_s": round(result.elapsed_s, 2), "run_key": run_key,
        **executor.describe(), **tracked,
    })


# ---------------------------------------------------------------------------
# judge_step_labels
# ---------------------------------------------------------------------------
@asset(
    partitions_def=dataset_partitions,
    group_name="labels",
    automation_condition=on_new_data(),
    pool=GPU_POOL,
    op_tags=SHARDED_OP_TAGS,
    retry_policy=REMOTE_RETRY,
    ins={"policy_rollouts": AssetIn(), "seed_problems": AssetIn()},
    description="Judge verdict per rollout: earliest wrong step (or -1) from the calculator (default) or an LLM "
    "judge; unparsed/abstained/failed verdicts are recorded with their status and never guessed.",
)
def judge_step_labels(
    context: AssetExecutionContext,
    config: JudgeConfig,
    policy_rollouts: pa.Table,
    seed_problems: pa.Table,
    settings: SettingsResource,
    storage: StorageResource,
    judge: JudgeResource,
    mlflow: MLflowResource,
    ray_cluster: RayResource,
) -> Output[pa.Table]:
    s = settings.stage(JUDGE, config)
    partition = context.partition_key
    problems = dict(zip(seed_problems.column("problem_id").to_pylist(), seed_problems.column("problem").to_pylist(),
                        strict=True))
    cols = ["rollout_id", "problem_id", "dataset", "steps"]
    rows = policy_rollouts.select(cols + (["skip_reason"] if "skip_reason" in policy_rollouts.column_names
                                          else [])).to_pylist()
    name = judge.name()

    def work(chunk: list[dict[str, Any]], index: int) -> pa.Table:
        # a skipped prompt has nothing to judge; an LLM judge without the problem text would judge blind:
        # record both, never guess
        known = [r for r in chunk if not r.get("skip_reason")
                 and (judge.kind == "calculator" or r["problem_id"] in problems)]
        judged = judge.judge([problems.get(r["problem_id"], "") for r in known],
                             [list(r["steps"] or []) for r in known], max_tokens=s.max_tokens,
                             temperature=s.temperature, seed=s.seed)
        by_id = {r["rollout_id"]: v for r, v in zip(known, judged, strict=True)}
        missing = JudgeRow("error", None, "problem_id not found in seed_problems", "", 0, 0)
        verdicts = [by_id.get(r["rollout_id"], JudgeRow("skipped", None, r["skip_reason"], "", 0, 0)
                              if r.get("skip_reason") else missing) for r in chunk]
        return pa.Table.from_pylist([{
            "rollout_id": r["rollout_id"], "problem_id": r["problem_id"], "dataset": r["dataset"], "judge": name,
            "status": v.status, "first_error": v.first_error, "detail": v.detail or None,
            "raw_output": v.raw_output or None, "prompt_tokens": v.prompt_tokens,
            "completion_tokens": v.completion_tokens,
        } for r, v in zip(chunk, verdicts, strict=True)], schema=JUDGE_SCHEMA)

    if judge.kind == "calculator":  # milliseconds: nothing to resume
        table = work(rows, 0)
        extra: dict[str, Any] = {}
    else:
        run_key = fingerprint({"settings": s.model_dump(), "judge": judge.engine_config().identity(),
                               "rows": fingerprint([(r["rollout_id"], r["steps"]) for r in rows]),
                               "problems": fingerprint(sorted(problems.items()))})
        executor = ray_cluster.executor()
        res = run_sharded(storage.get(), JUDGE, partition, run_key, rows, s.shard_size, work, JUDGE_SCHEMA,
                          executor=executor)
        table = res.table
        extra = {"shards_reused": res.shards_reused, "shards_computed": res.shards_computed, "run_key": run_key,
                 **executor.describe()}
    statuses = Counter(table.column("status").to_pylist())
    fes = [fe for fe, st in zip(table.column("first_error").to_pylist(), table.column("status").to_pylist(),
                                strict=True) if st == "ok"]
    metrics = {
        "rollouts": float(table.num_rows),
        "verdicts_ok": float(statuses.get("ok", 0)),
        "skipped_prompts": float(statuses.get("skipped", 0)),
        "unparsed_share": (table.num_rows - statuses.get("ok", 0) - statuses.get("skipped", 0))
        / max(table.num_rows - statuses.get("skipped", 0), 1),
        "error_share": sum(fe >= 0 for fe in fes) / max(len(fes), 1),
    }
    tracked = _log_mlflow(context, mlflow, JUDGE, {"judge": name, "partition": partition}, metrics)
    return Output(table, data_version=table_data_version(table), metadata={
        "judge": name, "rows": table.num_rows, "status_counts": MetadataValue.json(dict(statuses)),
        "unparsed_share": round(metrics["unparsed_share"], 4), "error_share": round(metrics["error_share"], 4),
        **extra, **tracked,
    })


# ---------------------------------------------------------------------------
# consensus_labels
# ---------------------------------------------------------------------------
@asset(
    partitions_def=dataset_partitions,
    group_name="labels",
    automation_condition=on_new_data(),
    retry_policy=REMOTE_RETRY,
    ins={"mc_step_labels": AssetIn(), "judge_step_labels": AssetIn(), "seed_problems": AssetIn(),
         "policy_rollouts": AssetIn()},
    description="Rollouts on which MC and the judge agree on the first error, with one label per kept step; "
    "TRL stepwise-supervision export beside it; audit against the world oracle in metadata and MLflow.",
    check_specs=[
        *[AssetCheckSpec(name, asset=CONSENSUS, blocking=True, partitions_def=dataset_partitions, description=d)
          for name, d in CONSENSUS_CHECKS.items()],
        AssetCheckSpec("kept_share_in_bounds", asset=CONSENSUS, partitions_def=dataset_partitions,
                       description="WARN when the kept share leaves [kept_share_min, kept_share_max]"),
    ],
)
def consensus_labels(
    context: AssetExecutionContext,
    config: ConsensusConfig,
    mc_step_labels: pa.Table,
    judge_step_labels: pa.Table,
    seed_problems: pa.Table,
    policy_rollouts: pa.Table,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: MLflowResource,
) -> Iterator[Any]:
    from prmforge.labeling.audit import audit

    s = settings.stage(CONSENSUS, config)
    partition = context.partition_key
    judge_names = sorted(set(judge_step_labels.column("judge").to_pylist())) or ["none"]
    res = build_consensus(mc_step_labels, judge_step_labels, ",".join(judge_names))
    table = res.table
    store = storage.get()
    trl_path = store.path("datasets", TRL, partition, "data.parquet")
    store.write_bytes_atomic(trl_path, trl_parquet_bytes(table))
    trl_url = store.url("datasets", TRL, partition, "data.parquet")

    report = audit(seed_problems, mc_step_labels, judge_step_labels, table, target=s.audit_target)
    metrics: dict[str, float] = {"kept_share": res.kept_share, "kept": float(res.kept),
                                 "rollouts": float(res.total)}
    metrics.update({f"disagree_{k}": float(v) for k, v in res.breakdown.items()})
    metrics.update(report.flat_metrics())
    if report.target_met is not None:
        metrics["audit_target_met"] = float(report.target_met)
    modes = sorted(set(mc_step_labels.column("mc_mode").to_pylist()))
    ks = sorted(set(mc_step_labels.column("k").to_pylist()))
    tracked = _log_mlflow(context, mlflow, CONSENSUS, {"judge": ",".join(judge_names), "mc_mode": ",".join(modes),
                                                       "k": ",".join(map(str, ks)), "partition": partition}, metrics)
    audit_md: dict[str, Any] = {"audit": MetadataValue.json(report.as_dict())}
    if report.applicable:
        for name in ("mc", "judge", "consensus"):
            sc = getattr(report, name)
            audit_md[f"audit_{name}_exact"] = round(sc.exact, 4) if sc.exact is not None else "n/a"
        audit_md["audit_target_met"] = bool(report.target_met)
        if report.why_missed:
            audit_md["audit_why_missed"] = report.why_missed
            context.log.warning(f"label audit target missed on {partition}: {report.why_missed}")
    else:
        audit_md["audit_skipped"] = report.reason
    yield Output(table, data_version=table_data_version(table), metadata={
        "rows": table.num_rows, "kept_share": round(res.kept_share, 4), "rollouts": res.total,
        "disagreements": MetadataValue.json(res.breakdown),
        "judge_status": MetadataValue.json(res.judge_status),
        "mc_mode": ",".join(modes), "k": ",".join(map(str, ks)), "judge": ",".join(judge_names),
        "trl_export": MetadataValue.url(trl_url),
        **audit_md, **tracked,
    })

    v = validate_consensus(table, policy_rollouts.column("rollout_id").to_pylist())
    for name, bad in (("labels_match_steps", v.labels_match_steps),
                      ("no_label_after_first_negative", v.label_after_negative),
                      ("ids_unique", v.duplicate_ids), ("traces_to_one_rollout", v.untraceable)):
        yield AssetCheckResult(check_name=name, asset_key=AssetKey(CONSENSUS), passed=not bad,
                               severity=AssetCheckSeverity.ERROR,
                               metadata={"violations": len(bad), "examples": MetadataValue.json(bad[:10])})
    in_bounds = s.kept_share_min <= res.kept_share <= s.kept_share_max
    yield AssetCheckResult(check_name="kept_share_in_bounds", asset_key=AssetKey(CONSENSUS), passed=in_bounds,
                           severity=AssetCheckSeverity.WARN,
                           metadata={"kept_share": round(res.kept_share, 4), "min": s.kept_share_min,
                                     "max": s.kept_share_max})
