"""``policy_rollouts``: n sampled solutions per seed problem, per dataset partition.

Thin wrapper around :func:`prmforge.rollouts.generate_rollouts`. The engine
comes from the ``policy_engine`` resource (``hf`` by default, ``vllm`` on GPUs,
``openai`` for a served model); an empty model means the bootstrap policy,
resolved from the latest ``policy_model`` materialisation. Work is sharded and
resumable: a killed or retried step recomputes only unfinished shards.
"""


from collections.abc import Iterator
from functools import partial
from typing import Any

import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MetadataValue,
    Output,
    asset,
)

from assets.common import table_data_version, upstream_uri
from assets.partitions import dataset_partitions
from pipelines.automation import GPU_POOL, REMOTE_RETRY, SHARDED_OP_TAGS, on_new_data
from prmforge.contracts.datasets import rollouts_contract
from prmforge.engines.factory import make_engine
from prmforge.rollouts import DATASET, chat_wrapper, generate_rollouts, select_problems
from prmforge.sharding import Progress
from resources.engine import EngineResource
from resources.quality import QualityResource
from resources.ray import RayResource
from resources.settings import SettingsResource, stage_config
from resources.storage import StorageResource

RolloutConfig = stage_config(DATASET)


def _checks() -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec("n_per_problem", asset=DATASET, blocking=True, partitions_def=dataset_partitions,
                       description="every problem has exactly n rollouts, sample indices 0..n-1"),
        AssetCheckSpec("steps_non_empty", asset=DATASET, blocking=True, partitions_def=dataset_partitions,
                       description="every rollout that ran has at least one step (engine errors count as "
                       "empty); prompts skipped because they do not fit the model's context are counted, not "
                       "failed, unless nothing is left to label"),
        AssetCheckSpec("truncation_rate", asset=DATASET, blocking=False, partitions_def=dataset_partitions,
                       description="share of rollouts that hit max_tokens (WARN above the threshold)"),
        AssetCheckSpec("rollouts_contract", asset=DATASET, blocking=True, partitions_def=dataset_partitions,
                       description="GX (prmforge/contracts/datasets.py): N per problem, ids unique, finish reasons "
                       "known, engine-error share and mean steps per solution within the configured bounds"),
    ]


def _n_per_problem(table: pa.Table, problem_ids: list[str], n: int) -> tuple[bool, dict]:
    per: dict[str, list[int]] = {p: [] for p in problem_ids}
    unknown = 0
    for p, j in zip(table.column("problem_id").to_pylist(), table.column("sample_index").to_pylist(), strict=True):
        if p in per:
            per[p].append(j)
        else:
            unknown += 1
    bad = [p for p, js in per.items() if sorted(js) != list(range(n))]
    return (not bad and unknown == 0), {"problems": len(per), "problems_wrong_count": len(bad),
                                        "unexpected_rows": unknown, "examples": MetadataValue.json(bad[:10])}


@asset(
    partitions_def=dataset_partitions,
    group_name="rollouts",
    automation_condition=on_new_data(),
    pool=GPU_POOL,
    op_tags=SHARDED_OP_TAGS,
    retry_policy=REMOTE_RETRY,
    deps=[AssetKey("policy_model")],
    check_specs=_checks(),
    description="n sampled step-by-step solutions per seed problem (rollout_id, problem_id, steps, text, "
    "extracted_answer, correct, token counts, finish_reason, truncated). "
    "Path: <root>/datasets/policy_rollouts/<dataset>/data.parquet",
)
def policy_rollouts(
    context: AssetExecutionContext,
    config: RolloutConfig,
    seed_problems: pa.Table,
    settings: SettingsResource,
    storage: StorageResource,
    policy_engine: EngineResource,
    quality: QualityResource,
    ray_cluster: RayResource,
) -> Iterator[Any]:
    """Sample the policy on every seed problem of the partition (in process, or over Ray actors)."""
    partition = context.partition_key
    rs = settings.stage(DATASET, config)
    bootstrap = not policy_engine.model
    model = policy_engine.model or upstream_uri(context, "policy_model")
    engine_cfg = policy_engine.config(model_override=model)
    chat = chat_wrapper(model, policy_engine.trust_remote_code) if rs.chat_template else None
    context.log.info(f"{partition}: {seed_problems.num_rows} problems x n={rs.n} with {engine_cfg.backend} "
                     f"on {model} (bootstrap policy: {bootstrap})")

    def on_progress(p: Progress, tokens_per_s: float) -> None:
        eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
        context.log.info(f"{partition}: shard {p.shards_done}/{p.shards_total}, problems {p.items_done}/"
                         f"{p.items_total}, {tokens_per_s:.0f} tokens/s, ETA {eta}")

    executor = ray_cluster.executor()
    # partial, not a lambda over the resource: a Ray executor pickles the factory to every actor
    run = generate_rollouts(
        storage.get(), partition, seed_problems, rs, engine_cfg.identity(),
        partial(make_engine, engine_cfg), bootstrap, on_progress=on_progress, chat=chat, executor=executor,
    )
    table, stats = run.table, run.stats
    n_key = f"pass@{rs.n}"
    context.log.info(f"{partition}: {stats['rollouts']} rollouts, accuracy {stats['accuracy']:.3f}, "
                     f"{n_key} {stats[n_key]:.3f}, truncation {stats['truncation_rate']:.3f}; "
                     f"{run.shards_reused}/{run.shards_total} shards reused")
    yield Output(
        table,
        metadata={
            "rollouts": stats["rollouts"],
            "problems": stats["problems"],
            "accuracy": float(stats["accuracy"]),
            "pass_at_n": float(stats[n_key]),
            "n": rs.n,
            "truncation_rate": float(stats["truncation_rate"]),
            "finish_reasons": MetadataValue.json(stats["finish_reasons"]),
            "skipped_prompts": stats["skipped_prompts"],
            "skipped_rollouts": stats["skipped_rollouts"],
            **({"skipped": stats["skip_message"]} if stats["skip_message"] else {}),
            "shards_total": run.shards_total,
            "shards_reused": run.shards_reused,
            "shards_computed": run.shards_computed,
            "elapsed_s": round(run.elapsed_s, 3),
            "tokens_per_s": round(run.tokens_per_s, 1),
            "completion_tokens_computed": run.completion_tokens_computed,
            "run_key": run.run_key,
            "backend": engine_cfg.backend,
            "model": model,
            **executor.describe(),
        },
        data_version=table_data_version(table),
    )
    expected_ids = select_problems(seed_problems, rs).column("problem_id").to_pylist()
    ok, meta = _n_per_problem(table, expected_ids, rs.n)
    yield AssetCheckResult(check_name="n_per_problem", asset_key=AssetKey(DATASET), passed=ok,
                           severity=AssetCheckSeverity.ERROR, metadata={**meta, "n": rs.n})
    empty, skipped = stats["empty_steps"], stats["skipped_rollouts"]
    nothing_left = stats["rollouts"] > 0 and stats["usable_rollouts"] == 0
    yield AssetCheckResult(
        check_name="steps_non_empty", asset_key=AssetKey(DATASET), passed=empty == 0 and not nothing_left,
        severity=AssetCheckSeverity.ERROR,
        description=("; ".join(filter(None, [f"{empty} rollouts without steps" if empty else "",
                                            stats["skip_message"], "no rollout left to label" if nothing_left
                                            else ""])) or None),
        metadata={**({"reason": f"{empty} rollouts ran and have no step" if empty else "no rollout left to label"}
                     if empty or nothing_left else {}),
                  "empty": empty, "errors": stats["finish_reasons"].get("error", 0), "skipped_rollouts": skipped,
                  "skipped_prompts": stats["skipped_prompts"],
                  "skip_reasons": MetadataValue.json(stats["skip_reasons"]),
                  **({"skipped": stats["skip_message"]} if skipped else {})})
    rate = float(stats["truncation_rate"])
    yield AssetCheckResult(check_name="truncation_rate", asset_key=AssetKey(DATASET),
                           passed=rate <= rs.truncation_warn_rate, severity=AssetCheckSeverity.WARN,
                           metadata={"truncation_rate": rate, "threshold": rs.truncation_warn_rate})
    yield quality.check(rollouts_contract(rs.n, len(expected_ids), rs.max_engine_error_share,
                                          (rs.mean_steps_min, rs.mean_steps_max)), table)
