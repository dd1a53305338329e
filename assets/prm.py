"""PRM stage: ``prm_model`` (train), ``prm_evaluation`` (ProcessBench F1, Best-of-N) and ``registered_prm``.

Thin Dagster layer over ``prmforge.prm``. Models travel as storage URIs in
``uri`` metadata, never through the IO manager; figures go to Dagster metadata
and MLflow.
"""


import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.common import (
    check_result,
    metadata_values,
    mlflow_run_metadata,
    table_data_version,
    upstream_metadata,
    upstream_uri,
)
from pipelines.automation import GPU_POOL, REMOTE_RETRY, TRAIN_OP_TAGS, on_new_data, retrain_condition
from prmforge.contracts.datasets import step_scores_contract
from prmforge.prm.export import save_prm
from prmforge.prm.metrics import STEP_SCORES
from prmforge.prm.registry import registered_parity_outcome
from prmforge.prm.settings import PRMTrainSettings
from prmforge.prompts import policy_prompt
from resources.engine import EngineResource
from resources.mlflow import MLflowResource
from resources.quality import QualityResource
from resources.settings import SettingsResource, stage_config
from resources.storage import StorageResource

if TYPE_CHECKING:
    from prmforge.prm.pipeline import EvalReport

PRM_MODEL = "prm_model"
PRM_EVALUATION = "prm_evaluation"
REGISTERED_PRM = "registered_prm"

PRMModelConfig = stage_config(PRM_MODEL)
PRMEvalConfig = stage_config(PRM_EVALUATION)
RegisteredPRMConfig = stage_config(REGISTERED_PRM)


def partition_data_versions(context: AssetExecutionContext, asset: str) -> dict[str, str]:
    """Latest data version of each partition (or ``__all__``) of ``asset``; empty if unknown."""
    out: dict[str, str] = {}
    try:
        records = context.instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(asset)),
                                                          limit=500).records
    except Exception:  # noqa: BLE001 - lineage is best effort, never fatal
        return out
    for rec in records:  # newest first
        event = rec.event_log_entry.dagster_event
        if event is None or event.step_materialization_data is None:
            continue
        mat = event.step_materialization_data.materialization
        key = mat.partition or "__all__"
        version = (mat.tags or {}).get("dagster/data_version")
        if version and key not in out:
            out[key] = version
    return out


@contextmanager
def _mlflow_run(context: AssetExecutionContext, mlflow: MLflowResource, name: str,
                tags: dict[str, str]) -> Iterator[Any]:
    """An MLflow run; an unreachable tracking server fails the step (after MLflow's own retries).

    Failing, not training untracked, is the contract of the reliability suite:
    a model without its run cannot be registered with lineage, and the PRM
    checkpoints in storage make the rerun resume where this one stopped.
    """
    try:
        cm = mlflow.start_run(name, tags={**tags, "dagster_run_id": context.run.run_id})
        run = cm.__enter__()
    except Exception as exc:
        raise RuntimeError(f"MLflow tracking server {mlflow.tracking_uri} unreachable for {name} "
                           f"(after retries): {type(exc).__name__}: {str(exc)[:300]}") from exc
    try:
        yield run
    except BaseException as exc:
        cm.__exit__(type(exc), exc, exc.__traceback__)
        raise
    cm.__exit__(None, None, None)


def _base_model(context: AssetExecutionContext, s: PRMTrainSettings, storage: StorageResource) -> str:
    return upstream_uri(context, "prm_base_model", storage) if s.base_model == "policy" else s.base_model


@asset(
    ins={"consensus_labels": AssetIn(partition_mapping=AllPartitionMapping())},
    deps=["prm_base_model"],
    group_name="prm",
    automation_condition=retrain_condition(),
    pool=GPU_POOL,
    op_tags=TRAIN_OP_TAGS,
    retry_policy=REMOTE_RETRY,
    description="PRM (policy backbone + step head) trained on the consensus labels of all (or the configured) "
    "dataset partitions; weights in storage and MLflow, passed on as `uri` metadata.",
    check_specs=[
        AssetCheckSpec("training_sane", asset=PRM_MODEL, blocking=True,
                       description="finite loss; every training row used or counted as rejected"),
        AssetCheckSpec("loss_decreased", asset=PRM_MODEL,
                       description="WARN when the last quarter's mean loss is not below the first quarter's"),
        AssetCheckSpec("model_complete", asset=PRM_MODEL, blocking=True,
                       description="the stored PRM folder is complete: marker, config.json, safetensors only"),
    ],
)
def prm_model(
    context: AssetExecutionContext,
    config: PRMModelConfig,
    consensus_labels: pa.Table,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: MLflowResource,
) -> MaterializeResult:
    import mlflow as mlf

    from prmforge.distributed.torchrun import fit_prm
    from prmforge.prm.pipeline import select_rows

    s = settings.stage(PRM_MODEL, config)
    rows = select_rows(consensus_labels, s.datasets)
    if not rows:
        # Deterministic: retrying cannot help, so no retries (the orchestration layer retries remote steps).
        raise Failure(description=f"no consensus label rows to train on (datasets {s.datasets!r}; present: "
                      f"{sorted(set(consensus_labels.column('dataset').to_pylist()))}); label more rollouts or "
                      "widen the selection", allow_retries=False)
    data_version = table_data_version(pa.Table.from_pylist(rows, schema=consensus_labels.schema)).value
    label_versions = partition_data_versions(context, "consensus_labels")
    base = _base_model(context, s, storage)
    store = storage.get()
    with _mlflow_run(context, mlflow, PRM_MODEL, {"stage": PRM_MODEL}) as run:
        mlflow.log_params({**s.model_dump(), "base_model_uri": base, "rows": len(rows),
                           "data_version.consensus_labels": data_version,
                           "data_versions.consensus_labels": json.dumps(label_versions)})

        def log_fn(metrics: dict[str, float], step: int) -> None:
            mlf.log_metrics(metrics, step=step)

        # in this process, or one DDP process per GPU (num_workers > 1), launched and followed by this step
        result = fit_prm(rows, s, base, storage=store, data_version=data_version, log_fn=log_fn,
                         log=context.log.info)
        with tempfile.TemporaryDirectory() as tmp:
            result.model.config.base_model = store.ref(base)  # prm_config.json records no machine path
            folder = save_prm(result.model, result.tokenizer, Path(tmp) / "prm")
            uri = store.put_dir(folder, "models", "prm", result.run_key)
            mlf.log_metrics({f"encode_{k}": float(v) for k, v in result.stats.as_dict().items()})
            mlf.log_metric("tokens_per_s_mean", result.train.tokens_per_s)
            mlf.log_artifacts(str(folder), "prm_model")
    if result.stats.steps_truncated:
        context.log.warning(f"{result.stats.steps_truncated} trailing steps dropped by truncation at "
                            f"max_length={result.model.config.max_length} (counted, never mislabelled)")
    checks = [check_result(PRM_MODEL, c) for c in result.checks(len(rows), uri)]
    return MaterializeResult(check_results=checks, metadata=metadata_values({
        "uri": MetadataValue.path(store.ref(uri)), "base_model": store.ref(base), "rows": len(rows),
        "data_version_consensus_labels": data_version, "data_versions_consensus_labels": label_versions,
        **result.metadata(), "num_workers": s.num_workers, "settings": s.model_dump(),
        **mlflow_run_metadata(mlflow, run.info.run_id),
    }))


@asset(
    deps=[PRM_MODEL, "world_benchmark", "policy_model"],
    group_name="prm",
    automation_condition=on_new_data(),
    retry_policy=REMOTE_RETRY,
    description="ProcessBench-format F1 per subset (threshold chosen on a separate split), Best-of-N reranking "
    "vs majority/random/pass@N on held-out world problems, and diagnostics; plots in MLflow.",
    check_specs=[AssetCheckSpec("steps_scored", asset=PRM_EVALUATION, blocking=True,
                                description="at most max_unscored_share (1%) of benchmark steps left unscored "
                                "because they did not fit the PRM's context; more makes the F1 an artefact"),
                 AssetCheckSpec("step_scores_contract", asset=PRM_EVALUATION, blocking=True,
                                description="GX on prm_step_scores: scores in [0, 1], unscored share under the "
                                "limit, subsets and sample counts as configured")],
)
def prm_evaluation(
    context: AssetExecutionContext,
    config: PRMEvalConfig,
    settings: SettingsResource,
    storage: StorageResource,
    policy_engine: EngineResource,
    mlflow: MLflowResource,
    quality: QualityResource,
) -> MaterializeResult:
    import mlflow as mlf

    from prmforge.model_files import resolve_model_dir
    from prmforge.prm.model import ProcessRewardModel
    from prmforge.prm.pipeline import evaluate

    s = settings.stage(PRM_EVALUATION, config)
    prm_meta = upstream_metadata(context, PRM_MODEL)
    prm_dir = resolve_model_dir(upstream_uri(context, PRM_MODEL, storage))
    model, tok = ProcessRewardModel.load(prm_dir)
    store = storage.get()
    world = store.read_dataset("world_benchmark") if store.dataset_exists("world_benchmark") else None
    try:
        bon_engine = policy_engine.config(policy_engine.model or upstream_uri(context, "policy_model", storage))
        bon_prompt = policy_prompt(bon_engine.model, "world", not policy_engine.model, None,
                                   policy_engine.trust_remote_code)
    except RuntimeError as exc:
        context.log.warning(f"no policy for Best-of-N: {exc}")
        bon_engine = bon_prompt = None
    with tempfile.TemporaryDirectory() as tmp:
        rep = evaluate(model, tok, s, tmp, world_table=world, policy_engine=bon_engine, prm_folder=prm_dir,
                       policy_prompt=bon_prompt)
        metrics = rep.flat_metrics()
        with _mlflow_run(context, mlflow, PRM_EVALUATION, {"stage": PRM_EVALUATION,
                                                          "prm_run_id": str(prm_meta.get("mlflow_run_id", ""))}) as run:
            mlflow.log_params({**s.model_dump(), "prm_uri": prm_meta["uri"]})
            mlf.log_metrics({k: v for k, v in metrics.items() if v == v})
            for p in rep.plots:
                mlf.log_artifact(p, "plots")
            mlf.log_text(rep.markdown(), "summary.md")
            mlf.log_dict({str(n): c for n, c in rep.curve.items()}, "bon_curve.json")
    return MaterializeResult(metadata={
        "summary": MetadataValue.md(rep.markdown()),
        "threshold": round(rep.threshold, 4),
        **{k: round(float(v), 4) for k, v in metrics.items() if v == v},
        "benchmark_rejected": MetadataValue.json(rep.rejected),
        "bon_curve": MetadataValue.json({str(n): c for n, c in rep.curve.items()}),
        "prm_uri": MetadataValue.path(str(prm_meta["uri"])),
        **rep.targets(),
        **mlflow_run_metadata(mlflow, run.info.run_id),
        "step_scores": MetadataValue.path(store.ref(store.write_dataset(STEP_SCORES, rep.step_scores))),
    }, check_results=[_steps_scored_check(rep, s.max_unscored_share),
                      quality.check(step_scores_contract(s.max_unscored_share, rep.samples_per_subset),
                                    rep.step_scores)])


def _steps_scored_check(rep: "EvalReport", max_share: float) -> AssetCheckResult:
    """Blocking: the share of unscored benchmark steps, per subset, against ``max_share``."""
    total, unscored = rep.counts.get("steps_total", 0.0), rep.counts.get("steps_unscored", 0.0)
    share = unscored / total if total else 0.0
    per_subset = {k: {"unscored": int(v["unscored"]), "steps": int(v["steps"]),
                      "samples_with_unscored": int(v["samples_with_unscored"])} for k, v in rep.unscored.items()}
    return AssetCheckResult(
        check_name="steps_scored", asset_key=AssetKey(PRM_EVALUATION), passed=share <= max_share,
        severity=AssetCheckSeverity.ERROR,
        description=(f"{unscored:.0f} of {total:.0f} steps ({share:.1%}) did not fit the PRM's context "
                     f"({rep.counts.get('scoring_max_length', 0):.0f} tokens) and were not scored; "
                     f"limit {max_share:.1%}"),
        metadata={"reason": f"{unscored:.0f} of {total:.0f} steps ({share:.1%}) unscored: longer than the PRM's "
                            f"context ({rep.counts.get('scoring_max_length', 0):.0f} tokens)",
                  "steps_unscored": int(unscored), "steps_total": int(total), "unscored_share": round(share, 4),
                  "max_unscored_share": max_share, "scoring_max_length": int(rep.counts.get("scoring_max_length", 0)),
                  "per_subset": MetadataValue.json(per_subset)})


@asset(
    deps=[PRM_EVALUATION],
    group_name="prm",
    automation_condition=on_new_data(),
    retry_policy=REMOTE_RETRY,
    description="The PRM logged as an MLflow pyfunc (problem + steps → one score per step), registered with "
    "lineage tags; alias `challenger`, and `champion` only if the gate metric beats the champion by the margin.",
    check_specs=[AssetCheckSpec("registered_scores_match", asset=REGISTERED_PRM, blocking=True,
                                description="the registered version loads through MLflow and scores a fixed "
                                "example exactly as the trained model does")],
)
def registered_prm(
    context: AssetExecutionContext,
    config: RegisteredPRMConfig,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: MLflowResource,
) -> MaterializeResult:
    import mlflow as mlf

    from prmforge.model_files import resolve_model_dir
    from prmforge.prm.pyfunc import log_pyfunc
    from prmforge.prm.registry import format_tags, lineage_tags, register_and_gate

    s = settings.stage(REGISTERED_PRM, config)
    prm_meta = upstream_metadata(context, PRM_MODEL)
    eval_meta = upstream_metadata(context, PRM_EVALUATION)
    value = float(eval_meta.get(s.gate_metric, float("nan")))
    if value != value:
        context.log.warning(f"gate metric {s.gate_metric!r} missing from prm_evaluation: no promotion")
    versions = {a: partition_data_versions(context, a)
                for a in ("seed_problems", "policy_rollouts", "consensus_labels")}
    local = resolve_model_dir(upstream_uri(context, PRM_MODEL, storage))
    lineage = {**lineage_tags(prm_meta, versions, s.model_dump(), context.run.run_id), **format_tags(local, eval_meta)}
    mlf.set_tracking_uri(mlflow.tracking_uri)
    run_id = str(prm_meta.get("mlflow_run_id") or "") or None
    if run_id:
        with mlf.start_run(run_id=run_id):
            info = log_pyfunc(local)
    else:
        with mlflow.start_run(REGISTERED_PRM, tags={"stage": REGISTERED_PRM}):
            info = log_pyfunc(local)
    decision = register_and_gate(mlflow.client(), s.model_name, info.model_uri, info.run_id, s.gate_metric,
                                 value, lineage, s.gate_margin)
    context.log.info(f"registered {s.model_name} v{decision.version}: {decision.reason}")
    parity = registered_parity_outcome(f"models:/{s.model_name}/{decision.version}", local)
    return MaterializeResult(check_results=[check_result(REGISTERED_PRM, parity)], metadata={
        **decision.as_metadata(),
        "model_name": s.model_name,
        "model_uri": f"models:/{s.model_name}/{decision.version}", **mlflow_run_metadata(mlflow, info.run_id),
        "lineage": MetadataValue.json(lineage),
    })
