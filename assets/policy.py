"""``policy_model`` (train or reuse the bootstrap policy), ``prm_base_model`` and ``world_benchmark``.

``prm_base_model`` is the language model the PRM starts from. It is trained by
the same code as the policy, from the ``policy_model`` settings with the profile's
``prm_base_model`` entries on top; with none (tiny, demo) its config hash equals the
policy's, so it *is* the policy folder, reused at no cost. The world profile
trains it longer: a verifier that knows more than the policy it reranks
(docs/prm.md says why and what it measured).

Thin wrappers around :mod:`prmforge.policy`. The model folder lives at
``<root>/models/policy/<config hash>/`` and is reused while its settings and
code version are unchanged; its calibration is shown as metadata and checked
(WARN) against the band. ``world_benchmark`` samples the policy on held-out
world problems and stores the ProcessBench-format table; a blocking check
requires enough rows of both classes.
"""

import tempfile
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field

from assets.common import (
    check_result,
    mlflow_run_metadata,
    table_data_version,
    upstream_metadata,
    upstream_uri,
)
from pipelines.automation import REMOTE_RETRY, build_if_missing
from prmforge.checks import model_folder_outcome
from prmforge.contracts.datasets import world_benchmark_contract
from prmforge.policy import PolicySettings
from prmforge.policy.benchmark import build_world_benchmark
from prmforge.policy.calibration import ACCURACY_BAND, MIN_KIND_SHARE
from prmforge.policy.store import PolicyBuild, ensure_policy
from resources.mlflow import MLflowResource
from resources.quality import QualityResource
from resources.settings import SettingsResource, stage_config
from resources.storage import StorageResource

MIN_BENCHMARK_PER_CLASS = 5


_FORCE_RETRAIN = {"force_retrain": (bool, Field(False, description="train even if a complete model with this "
                                                             "config exists"))}
PolicyConfig = stage_config("policy_model", extra=_FORCE_RETRAIN)
PRMBaseConfig = stage_config("prm_base_model", extra=_FORCE_RETRAIN)
WorldBenchmarkConfig = stage_config("world_benchmark", extra={
    "min_per_class": (int, Field(MIN_BENCHMARK_PER_CLASS, description="fewest fully correct and erroneous rows "
                                 "the benchmark_usable check accepts"))})


def _find_run(mlflow: MLflowResource, config_hash: str) -> str | None:
    """The MLflow run that already records this policy (a reuse logs no duplicate run)."""
    runs = mlflow.client().search_runs([mlflow.experiment_id()],
                                       filter_string=f"tags.`prmforge.policy_hash` = '{config_hash}'",
                                       max_results=1)
    return runs[0].info.run_id if runs else None


def _log_mlflow(mlflow: MLflowResource, build: PolicyBuild, ref: str) -> str:
    """One MLflow run per trained policy: params, training curve, calibration."""
    import mlflow as mlf

    cal = build.calibration
    with mlflow.start_run(run_name=f"policy-{build.config_hash}", tags={"prmforge.stage": "policy",
                                                                  "prmforge.policy_hash": build.config_hash}) as run:
        mlflow.log_params({**build.info["settings"], "config_hash": build.config_hash, "uri": ref,
                           "num_parameters": build.info["num_parameters"]})
        for step, loss in build.info["curve"]:
            mlf.log_metric("train_loss", float(loss), step=int(step))
        mlf.log_metrics({
            "calib_accuracy": cal.accuracy,
            "calib_process_correct": cal.process_correct,
            "calib_arithmetic_share": cal.kind_shares["arithmetic"],
            "calib_logic_share": cal.kind_shares["logic"],
            "calib_format_share": cal.kind_shares["format"],
            "train_seconds": float(build.info["train_seconds"]),
        })
        mlf.log_text(cal.histogram_markdown(), "calibration_histogram.md")
        return run.info.run_id


def _model_complete_check(asset_name: str) -> AssetCheckSpec:
    return AssetCheckSpec("model_complete", asset=asset_name, blocking=True,
                          description="the stored model folder is complete: marker, config.json, safetensors only")


def _calibration_check(asset_name: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        "calibration_in_band", asset=asset_name, blocking=False,
        description=f"accuracy in {ACCURACY_BAND[0]:.0%}-{ACCURACY_BAND[1]:.0%} at T=1.0 and arithmetic and "
        f"logic each >= {MIN_KIND_SHARE:.0%} of wrong solutions (WARN: a policy outside the band still works)")


@asset(
    group_name="policy",
    automation_condition=build_if_missing(),
    retry_policy=REMOTE_RETRY,
    check_specs=[_calibration_check("policy_model"), _model_complete_check("policy_model")],
    description="Bootstrap policy: small Llama (or Qwen2, architecture: qwen2), 2,048 positions, trained from scratch "
    "on gold world solutions (HF folder: "
    "config.json, model.safetensors, tokenizer). Path: <root>/models/policy/<config hash>/",
)
def policy_model(
    context: AssetExecutionContext,
    config: PolicyConfig,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: MLflowResource,
) -> MaterializeResult:
    """Train (or reuse when unchanged) and calibrate the bootstrap policy."""
    ps = settings.stage("policy_model", config)
    return _train_or_reuse(context, "policy_model", ps, config.force_retrain, settings, storage, mlflow)


@asset(
    group_name="policy",
    automation_condition=build_if_missing(),
    retry_policy=REMOTE_RETRY,
    # No calibration band here: the band keeps a *policy* wrong often enough to label; a verifier's
    # base should know as much as possible (its calibration is still reported as metadata).
    check_specs=[_model_complete_check("prm_base_model")],
    description="The LM the PRM starts from: the policy's settings plus the profile's `prm_base_model` entries. "
    "Without any it is the policy's own folder (same config hash, reused). Path: <root>/models/policy/<hash>/",
)
def prm_base_model(
    context: AssetExecutionContext,
    config: PRMBaseConfig,
    settings: SettingsResource,
    storage: StorageResource,
    mlflow: MLflowResource,
) -> MaterializeResult:
    """Train (or reuse) the PRM's base LM; the policy itself unless the profile asks for more."""
    ps = settings.stage("prm_base_model", config)
    return _train_or_reuse(context, "prm_base_model", ps, config.force_retrain, settings, storage, mlflow,
                           band_check=False)


def _train_or_reuse(context: AssetExecutionContext, asset_name: str, ps: PolicySettings, force: bool,
                    settings: SettingsResource, storage: StorageResource, mlflow: MLflowResource,
                    band_check: bool = True) -> MaterializeResult:
    with tempfile.TemporaryDirectory(prefix="prmforge-policy-") as work:
        build = ensure_policy(storage.get(), ps, work, force=force, log=context.log.info)
    cal = build.calibration
    run_id = _find_run(mlflow, build.config_hash) if build.reused else None
    if run_id is None:
        run_id = _log_mlflow(mlflow, build, storage.get().ref(build.uri))
    context.log.info(f"policy {build.config_hash}: {cal.summary()}")
    meta: dict[str, Any] = {
        **build.metadata(ps), "uri": storage.get().ref(build.uri), "profile": settings.profile,
        "calib_first_error_histogram": MetadataValue.md(cal.histogram_markdown()), **mlflow_run_metadata(mlflow, run_id),
    }
    return MaterializeResult(
        metadata=meta,
        data_version=DataVersion(build.config_hash),
        check_results=([AssetCheckResult(
            check_name="calibration_in_band", passed=cal.in_band, severity=AssetCheckSeverity.WARN,
            metadata={"accuracy": cal.accuracy, "arithmetic_share": cal.kind_shares["arithmetic"],
                      "logic_share": cal.kind_shares["logic"],
                      "reasons": MetadataValue.json(cal.reasons)},
        )] if band_check else []) + [check_result(asset_name, model_folder_outcome(build.uri))],
    )


@asset(
    group_name="policy",
    automation_condition=build_if_missing(),
    retry_policy=REMOTE_RETRY,
    deps=[AssetKey("policy_model")],
    check_specs=[AssetCheckSpec("benchmark_usable", asset="world_benchmark", blocking=True,
                                description="enough fully correct and erroneous samples to evaluate a PRM"),
                 AssetCheckSpec("world_benchmark_contract", asset="world_benchmark", blocking=True,
                                description="GX: ids unique, oracle labels inside the steps, error kinds known")],
    description="Held-out world benchmark in ProcessBench format (id, problem, steps, label, "
    "final_answer_correct, problem_id, error_kind, answer, predicted, meta), labelled by the oracle. "
    "Path: <root>/datasets/world_benchmark/data.parquet",
)
def world_benchmark(
    context: AssetExecutionContext,
    config: WorldBenchmarkConfig,
    settings: SettingsResource,
    storage: StorageResource,
    quality: QualityResource,
) -> Iterator[Any]:
    """Sample the policy on held-out problems, label with the oracle, balance the classes."""
    from prmforge.policy.sample import policy_engine
    from prmforge.prompts import policy_prompt

    uri = upstream_uri(context, "policy_model", storage)
    difficulty = str(upstream_metadata(context, "policy_model").get("difficulty") or "easy")
    bs = settings.stage("world_benchmark", config)
    ps = settings.stage("policy_model")
    with policy_engine(uri, bs.sample_batch_size, ps.num_threads) as engine:
        table, summary = build_world_benchmark(engine, bs, difficulty, policy_prompt(uri))
    context.log.info(f"world_benchmark from {uri}: {summary}")
    yield Output(
        table,
        metadata={
            "rows": table.num_rows,
            "correct": summary["correct"],
            "erroneous": summary["erroneous"],
            "right_answer_wrong_process": summary["right_answer_wrong_process"],
            "error_kinds": MetadataValue.json(summary["error_kinds"]),
            "problems": summary["problems"],
            "sampled": summary["sampled"],
            "policy_uri": storage.get().ref(uri),
        },
        data_version=table_data_version(table),
    )
    yield quality.check(world_benchmark_contract(), table)
    ok = min(summary["correct"], summary["erroneous"]) >= config.min_per_class
    yield AssetCheckResult(
        check_name="benchmark_usable", passed=ok,
        metadata={"correct": summary["correct"], "erroneous": summary["erroneous"],
                  "min_per_class": config.min_per_class},
    )
