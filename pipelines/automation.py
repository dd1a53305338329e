"""Run policy of the stages: the constants and conditions their ``@asset`` decorators declare.

Each stage module states its own policy on its decorator (``pool=``,
``op_tags=``, ``retry_policy=``, ``automation_condition=``,
``backfill_policy=``), built from the values here, so reading an asset tells
how it runs and this module says why. Jobs select stages by asset group
(``pipelines.jobs``).

Policy
------
* **Automation conditions.** Every downstream stage reruns when an input's
  *data version* changes (:func:`on_new_data`). Stage assets emit content
  hashes (``assets.common.table_data_version``), so a re-materialisation that
  produced the same rows triggers nothing. Labelling therefore runs when new
  rollouts land, and ``prm_model`` retrains when the consensus labels change
  and every blocking check upstream has passed (:func:`retrain_condition`).
  The unpartitioned policy-stage roots are built once if missing
  (:func:`build_if_missing`); ``seed_problems`` has none: the new-dataset
  sensor and the refresh schedule request it explicitly.
* **GPU pool.** Steps that hold a GPU (rollouts, MC labels, the judge, PRM
  training) run in the concurrency pool :data:`GPU_POOL`. Its limit is 1 by
  default (one GPU; set ``PRMFORGE_GPU_POOL_LIMIT`` or ``dagster instance
  concurrency set gpu N``). The same steps carry :data:`GPU_OP_TAGS`, the
  ``dagster-k8s/config`` op tag that asks Kubernetes for one GPU per step pod.
  A run whose process dies does not keep its slot: the CLI reaps its own dead
  in-process runs (``pipelines.cli.reap_dead_runs``) and the instance configs
  enable run monitoring with ``free_slots_after_run_end_seconds``.
* **Backfills.** The cheap seed stage runs a backfill over many datasets as
  one run (:data:`SINGLE_RUN_BACKFILL`; ``assets/seed.py`` handles a
  partition range); every other stage runs one dataset per run so backfills
  fan out across the gpu pool.
* **Retries.** Every stage reads or writes the storage root (S3 in
  production) and most call remote services (OpenAI-compatible engines,
  MLflow, dataset hubs): each step retries with exponential backoff and
  jitter (:data:`REMOTE_RETRY`). Every stage is idempotent (atomic writes,
  resumable shards, content-addressed versions), so a retry never duplicates
  work or output.
"""

from __future__ import annotations

import json

from dagster import AssetSelection, AutomationCondition, BackfillPolicy, Backoff, Jitter, RetryPolicy

from prmforge import env

GPU_POOL = "gpu"
K8S_GPU_TAG = "dagster-k8s/config"

# Asset groups, one per stage, in pipeline order. Jobs, the CLI and the docs use them.
STAGE_GROUPS: tuple[str, ...] = ("seed", "policy", "rollouts", "labels", "prm")


def retry_policy() -> RetryPolicy | None:
    """Exponential backoff with jitter for remote or flaky steps.

    ``PRMFORGE_MAX_RETRIES`` (default 3) and ``PRMFORGE_RETRY_DELAY_S``
    (default 5; then 10, 20, ... seconds) tune it; both are read when the code
    location is imported. ``PRMFORGE_MAX_RETRIES=0`` disables retries.
    """
    retries = env.max_retries()
    if retries <= 0:
        return None
    return RetryPolicy(max_retries=retries, delay=env.retry_delay_s(), backoff=Backoff.EXPONENTIAL,
                       jitter=Jitter.PLUS_MINUS)


def k8s_gpu_op_tags(gpus: int = 1) -> dict[str, str]:
    """Op tag read by ``k8s_job_executor``: the step pod requests ``gpus`` GPUs."""
    config = {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}},
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                             "effect": "NoSchedule"}]},
    }
    return {K8S_GPU_TAG: json.dumps(config)}


REMOTE_RETRY: RetryPolicy | None = retry_policy()
GPU_OP_TAGS: dict[str, str] = k8s_gpu_op_tags()
# With PRMFORGE_RAY_ADDRESS the sharded steps (rollouts, MC and judge labels) only drive Ray actors,
# which hold the GPUs on the Ray cluster: their own pods then ask for none.
SHARDED_OP_TAGS: dict[str, str] = {} if env.ray_address() else GPU_OP_TAGS
# prm_model with num_workers > 1 runs that many DDP processes in its pod: PRMFORGE_TRAIN_GPUS sizes it.
TRAIN_OP_TAGS: dict[str, str] = k8s_gpu_op_tags(env.train_gpus())
SINGLE_RUN_BACKFILL = BackfillPolicy.single_run()


# ---- automation conditions ------------------------------------------------


def _deps_have_new_data() -> AutomationCondition:
    """True when a dependency's data version changed since the previous tick,
    or it will be materialised on this tick (so a chain runs in one request).
    """
    return AutomationCondition.any_deps_match(
        AutomationCondition.data_version_changed() | AutomationCondition.will_be_requested()
    ).with_label("any_deps_new_data")


def missing_not_failed() -> AutomationCondition:
    """Never materialised, and the last attempt (if any) did not fail.

    ``on_missing()``/``newly_missing()`` only fire for partitions that become
    missing *after* the condition is first evaluated, so a fresh deployment
    would never build its unpartitioned roots. A failed attempt is not
    retried forever every tick: it waits for new input data or a person.
    """
    return (AutomationCondition.missing() & ~AutomationCondition.execution_failed()).with_label(
        "missing_not_failed"
    )


def build_if_missing() -> AutomationCondition:
    """The unpartitioned roots (policy, PRM base, world benchmark): built once when missing."""
    return (missing_not_failed() & ~AutomationCondition.in_progress()).with_label("build_if_missing")


def on_new_data() -> AutomationCondition:
    """``eager()`` keyed on data versions instead of mere updates.

    Runs a partition that became missing (a new dataset) once its inputs
    exist, or any partition whose inputs' content changed; never while an
    input is missing or in progress, and never from an input whose blocking
    check (its data contract) failed: the trigger waits until the input is
    fixed and passes. A no-op upstream run (same hash) does not trigger it.
    """
    return (
        AutomationCondition.in_latest_time_window()
        & (missing_not_failed() | _deps_have_new_data().since_last_handled())
        & AutomationCondition.all_deps_blocking_checks_passed()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("on_new_data")


def retrain_condition() -> AutomationCondition:
    """When ``prm_model`` retrains.

    Trigger: a dependency's data version changed (or the model is missing).
    Unlike ``on_new_data`` it does not chain onto labels requested in the same
    tick: the labels land and pass their checks first, then one retrain reads
    every dataset. The trigger is remembered until handled, so a tick that
    falls between the labels' materialisation and their checks does not lose
    it; the run starts once every blocking check upstream has passed and
    nothing upstream is in progress (so one new dataset leads to one retrain).
    Partitions of the labels that do not exist yet do not block retraining on
    the ones that do.
    """
    changed = AutomationCondition.any_deps_match(AutomationCondition.data_version_changed())
    return (
        (missing_not_failed() | changed.with_label("any_deps_data_version_changed").since_last_handled())
        & AutomationCondition.all_deps_blocking_checks_passed()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("retrain_on_new_labels")


def stage_selection(*groups: str) -> AssetSelection:
    """The assets of the given stages (asset groups); every stage when none is given."""
    return AssetSelection.groups(*(groups or STAGE_GROUPS))


__all__: list[str] = [
    "GPU_OP_TAGS",
    "SHARDED_OP_TAGS",
    "TRAIN_OP_TAGS",
    "GPU_POOL",
    "REMOTE_RETRY",
    "SINGLE_RUN_BACKFILL",
    "STAGE_GROUPS",
    "build_if_missing",
    "k8s_gpu_op_tags",
    "missing_not_failed",
    "on_new_data",
    "retrain_condition",
    "retry_policy",
    "stage_selection",
]
