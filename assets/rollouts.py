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
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Output,
    asset,
)

from assets.common import check_result, metadata_values, table_data_version, upstream_uri
from assets.partitions import dataset_partitions
from pipelines.automation import GPU_POOL, REMOTE_RETRY, SHARDED_OP_TAGS, on_new_data
from prmforge.contracts.datasets import rollouts_contract
from prmforge.engines.factory import make_engine
from prmforge.prompts import policy_prompt
from prmforge.rollouts import DATASET, generate_rollouts, rollout_checks, select_problems
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
    model = policy_engine.model or upstream_uri(context, "policy_model", storage)
    engine_cfg = policy_engine.config(model_override=model)
    prompt = policy_prompt(model, rs.prompt_template, bootstrap, rs.chat_template, policy_engine.trust_remote_code)
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
        partial(make_engine, engine_cfg), bootstrap, on_progress=on_progress, prompt=prompt, executor=executor,
    )
    context.log.info(f"{partition}: {run.summary(rs.n)}")
    metadata = {**run.metadata(rs.n, engine_cfg.backend, model), **executor.describe()}
    yield Output(run.table, metadata=metadata_values(metadata), data_version=table_data_version(run.table))
    for outcome in rollout_checks(run, seed_problems, rs):
        yield check_result(DATASET, outcome)
    contract = rollouts_contract(rs.n, select_problems(seed_problems, rs).num_rows, rs.max_engine_error_share,
                                 (rs.mean_steps_min, rs.mean_steps_max))
    yield quality.check(contract, run.table)
