"""Step labels: ``mc_step_labels``, ``judge_step_labels`` and ``consensus_labels``.

Thin Dagster layer over ``prmforge.labeling.stages`` (label_mc, label_judge,
label_consensus): each asset reads its settings and resources, calls the
stage, and reports the result as metadata, an MLflow run and asset checks.
"""

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    MetadataValue,
    Output,
    asset,
)

from assets.common import check_result, metadata_values, mlflow_run_metadata, table_data_version, upstream_uri
from assets.partitions import dataset_partitions
from pipelines.automation import GPU_POOL, REMOTE_RETRY, SHARDED_OP_TAGS, on_new_data
from prmforge.contracts.datasets import (
    consensus_contract,
    judge_contract,
    mc_contract,
    openrlhf_contract,
    trl_contract,
    trl_soft_contract,
)
from prmforge.labeling.exports import OPENRLHF, TRL, TRL_SOFT
from prmforge.labeling.stages import (
    CONSENSUS,
    CONSENSUS_CHECKS,
    EXPORTS,
    JUDGE,
    MC,
    label_consensus,
    label_judge,
    label_mc,
)
from prmforge.sharding import Progress
from resources.engine import EngineResource
from resources.judge import JudgeResource
from resources.mlflow import MLflowResource
from resources.quality import QualityResource
from resources.ray import RayResource
from resources.settings import SettingsResource, stage_config
from resources.storage import StorageResource

MCConfig = stage_config(MC)
JudgeConfig = stage_config(JUDGE)
ConsensusConfig = stage_config(CONSENSUS)


def contract_spec(asset: str, name: str, description: str) -> AssetCheckSpec:
    """The blocking, per-partition check a dataset contract (``prmforge/contracts``) reports to."""
    return AssetCheckSpec(name, asset=asset, blocking=True, partitions_def=dataset_partitions,
                          description=f"GX: {description}")


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
            return mlflow_run_metadata(mlflow, run.info.run_id)
    except Exception as exc:  # noqa: BLE001
        context.log.warning(f"MLflow logging failed for {stage}: {type(exc).__name__}: {exc}")
        return {"mlflow_error": f"{type(exc).__name__}: {exc}"[:300]}


# ---------------------------------------------------------------------------
# mc_step_labels
# ---------------------------------------------------------------------------
@asset(
    partitions_def=dataset_partitions,
    group_name="labels",
    automation_condition=on_new_data(),
    pool=GPU_POOL,
    op_tags=SHARDED_OP_TAGS,
    retry_policy=REMOTE_RETRY,
    ins={"policy_rollouts": AssetIn()},
    check_specs=[contract_spec(MC, "mc_contract", "one row per rollout (labelled or failed with its status), K as "
                               "configured, first errors inside the steps, MC values in [0, 1], failed share bounded")],
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
    quality: QualityResource,
) -> Iterator[Any]:
    """Label every rollout of the partition; shards are resumable across killed runs (and may run on Ray)."""
    s = settings.stage(MC, config)
    partition = context.partition_key
    bootstrap = not policy_engine.model  # empty: the bootstrap policy of policy_model
    model = policy_engine.model or upstream_uri(context, "policy_model", storage)

    def progress(p: Progress) -> None:
        context.log.info(f"{MC}/{partition}: shard {p.shards_done}/{p.shards_total}, rollouts "
                         f"{p.items_done}/{p.items_total}, {p.extra['tokens_per_s']:.0f} tokens/s, "
                         f"ETA {p.eta_s or 0:.0f}s")

    run = label_mc(storage.get(), partition, policy_rollouts, s, policy_engine.config(model), bootstrap, progress,
                   executor=ray_cluster.executor())
    tracked = _log_mlflow(context, mlflow, MC, run.params(partition), run.metrics)
    yield Output(run.table, data_version=table_data_version(run.table),
                 metadata=metadata_values({**run.metadata(), **tracked}))
    yield quality.check(mc_contract(s.k, policy_rollouts.num_rows, s.max_failed_share), run.table)


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
    check_specs=[contract_spec(JUDGE, "judge_contract", "one verdict per rollout, statuses known, share of "
                               "unparsed/abstained/failed verdicts bounded")],
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
    quality: QualityResource,
) -> Iterator[Any]:
    """The configured judge's verdicts; an LLM judge's shards are resumable across killed runs (and may run on Ray)."""
    s = settings.stage(JUDGE, config)
    with judge.make() as j:
        run = label_judge(storage.get(), context.partition_key, policy_rollouts, seed_problems, s, j,
                          executor=ray_cluster.executor())
    tracked = _log_mlflow(context, mlflow, JUDGE, run.params(context.partition_key), run.metrics)
    yield Output(run.table, data_version=table_data_version(run.table),
                 metadata=metadata_values({**run.metadata(), **tracked}))
    yield quality.check(judge_contract(policy_rollouts.num_rows, s.max_unusable_share), run.table)


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
    description="Rollouts on which MC and the judge agree on the first error, with one hard and one soft (MC value) "
    "label per kept step, PAV-style advantages and provenance; TRL stepwise (hard, soft) and OpenRLHF exports "
    "beside it; audit against the world oracle in metadata and MLflow.",
    check_specs=[
        *[AssetCheckSpec(name, asset=CONSENSUS, blocking=True, partitions_def=dataset_partitions, description=d)
          for name, d in CONSENSUS_CHECKS.items()],
        AssetCheckSpec("kept_share_in_bounds", asset=CONSENSUS, partitions_def=dataset_partitions,
                       description="WARN when the kept share leaves [kept_share_min, kept_share_max]"),
        contract_spec(CONSENSUS, "consensus_contract", "ids unique, K of the MC labels, labels consistent with "
                      "steps and first error, kept share above min_kept_share"),
        contract_spec(CONSENSUS, "trl_contract", "the TRL export: one row per kept rollout, one label per step"),
        contract_spec(CONSENSUS, "trl_soft_contract", "the soft TRL export: one MC value in [0, 1] and one "
                      "advantage per step"),
        contract_spec(CONSENSUS, "openrlhf_contract", "the OpenRLHF export: one +/- label and one value per "
                      "step placeholder"),
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
    quality: QualityResource,
) -> Iterator[Any]:
    """Consensus rows and exports, then the blocking integrity checks and contracts, and the kept-share WARN."""
    s = settings.stage(CONSENSUS, config)
    partition = context.partition_key
    run = label_consensus(storage.get(), partition, mc_step_labels, judge_step_labels, seed_problems,
                          policy_rollouts, s)
    if run.audit.why_missed:
        context.log.warning(f"label audit target missed on {partition}: {run.audit.why_missed}")
    tracked = _log_mlflow(context, mlflow, CONSENSUS, run.params(partition), run.metrics)
    links = {key: MetadataValue.path(storage.get().ref(run.export_urls[name])) for name, key in EXPORTS.items()}
    yield Output(run.table, data_version=table_data_version(run.table),
                 metadata=metadata_values({**run.metadata(), **links, **tracked}))
    for outcome in run.checks():
        yield check_result(CONSENSUS, outcome)
    ks = sorted(set(mc_step_labels.column("k").to_pylist()))
    yield quality.check(consensus_contract(ks, policy_rollouts.num_rows, s.min_kept_share), run.table)
    for name, contract in ((TRL, trl_contract), (TRL_SOFT, trl_soft_contract), (OPENRLHF, openrlhf_contract)):
        yield quality.check(contract(run.table.num_rows), storage.get().read_dataset(name, partition))
