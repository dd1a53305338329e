"""Run behaviour of every stage, applied centrally to the loaded assets.

Why centrally: the stage modules stay thin and the orchestration policy
(when a stage reruns, which steps share a GPU, which steps retry) lives in
one place that can be read and tested on its own. ``pipelines.definitions``
calls :func:`apply_orchestration` on the assets it loads.

Policy
------
* **Automation conditions.** Every downstream stage reruns when an input's
  *data version* changes (``on_new_data``). Stage assets emit content hashes
  (``assets.common.table_data_version``), so a re-materialisation that
  produced the same rows triggers nothing. Labelling therefore runs when new
  rollouts land, and ``prm_model`` retrains when the consensus labels change
  and every blocking check upstream has passed (``retrain_condition``).
* **GPU pool.** Steps that hold a GPU run in the concurrency pool ``gpu``.
  Its limit is 1 by default (one GPU; set ``PRMFORGE_GPU_POOL_LIMIT`` or
  ``dagster instance concurrency set gpu N``). The same steps carry the
  ``dagster-k8s/config`` op tag that asks Kubernetes for one GPU per step pod.
  A run whose process dies does not keep its slot: the CLI reaps its own
  dead in-process runs (``prmforge.cli.reap_dead_runs``) and the instance
  configs enable run monitoring with ``free_slots_after_run_end_seconds``.
* **Backfills.** The cheap seed stage runs a backfill over many datasets as
  one run (``SINGLE_RUN_BACKFILL_ASSETS``); every other stage runs one
  dataset per run so backfills fan out across the gpu pool.
* **Retries.** Steps that reach S3, MLflow or an OpenAI-compatible server
  retry with exponential backoff and jitter. Every stage is idempotent
  (atomic writes, resumable shards, content-addressed versions), so a retry
  never duplicates work or output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from dagster import (
    AssetsDefinition,
    AssetSelection,
    AssetSpec,
    AutomationCondition,
    BackfillPolicy,
    Backoff,
    In,
    Jitter,
    OpDefinition,
    Out,
    RetryPolicy,
)

from prmforge import env
from prmforge.env import gpu_pool_limit

GPU_POOL = "gpu"

# stage -> asset names, in pipeline order. Jobs, the CLI and the docs use it.
STAGES: dict[str, list[str]] = {
    "seed": ["seed_problems", "seed_problems_quarantine", "seed_problems_dropped"],
    "policy": ["policy_model", "prm_base_model", "world_benchmark"],
    "rollouts": ["policy_rollouts"],
    "labels": ["mc_step_labels", "judge_step_labels", "consensus_labels"],
    "prm": ["prm_model", "prm_evaluation", "registered_prm"],
}

GPU_ASSETS = frozenset({"policy_rollouts", "mc_step_labels", "judge_step_labels", "prm_model"})

# Everything reads or writes the storage root (S3 in production); these also
# call remote services (OpenAI-compatible engines, MLflow, dataset hubs).
REMOTE_ASSETS = frozenset(
    {
        "seed_problems",
        "policy_model",
        "prm_base_model",
        "world_benchmark",
        "policy_rollouts",
        "mc_step_labels",
        "judge_step_labels",
        "consensus_labels",
        "prm_model",
        "prm_evaluation",
        "registered_prm",
    }
)

# Cheap stages whose backfills run many partitions as ONE run
# (BackfillPolicy.single_run()). Only assets whose code handles a partition
# *range* may be listed here: ``seed_problems`` iterates
# ``context.partition_keys``, writes each dataset's tables atomically and
# reports a materialisation (data version = that table's content hash) and
# check evaluations per partition; a dataset that cannot be ingested fails
# alone (assets/seed.py). The three names are one multi-asset, listed together.
# GPU stages stay one run per dataset: they fan out across the gpu pool.
# See docs/orchestration.md "Backfills".
SINGLE_RUN_BACKFILL_ASSETS: frozenset[str] = frozenset(STAGES["seed"])

K8S_GPU_TAG = "dagster-k8s/config"


def retry_policy() -> RetryPolicy | None:
    """Exponential backoff with jitter for remote or flaky steps.

    ``PRMFORGE_MAX_RETRIES`` (default 3) and ``PRMFORGE_RETRY_DELAY_S``
    (default 5; then 10, 20, ... seconds) tune it; tests set small values.
    ``PRMFORGE_MAX_RETRIES=0`` disables retries.
    """
    retries = env.max_retries()
    if retries <= 0:
        return None
    return RetryPolicy(
        max_retries=retries,
        delay=env.retry_delay_s(),
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.PLUS_MINUS,
    )


def k8s_gpu_op_tags(gpus: int = 1) -> dict[str, str]:
    """Op tag read by ``k8s_job_executor``: the step pod requests ``gpus`` GPUs."""
    config = {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}},
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                             "effect": "NoSchedule"}]},
    }
    return {K8S_GPU_TAG: json.dumps(config)}


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


def on_new_data() -> AutomationCondition:
    """``eager()`` keyed on data versions instead of mere updates.

    Runs a partition that became missing (a new dataset) once its inputs
    exist, or any partition whose inputs' content changed; never while an
    input is missing or in progress. A no-op upstream run (same hash) does
    not trigger it.
    """
    return (
        AutomationCondition.in_latest_time_window()
        & (missing_not_failed() | _deps_have_new_data().since_last_handled())
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


def conditions() -> dict[str, AutomationCondition]:
    """Asset name -> automation condition. ``seed_problems`` has none: the
    new-dataset sensor and the refresh schedule request it explicitly."""
    out: dict[str, AutomationCondition] = {
        "policy_model": (missing_not_failed() & ~AutomationCondition.in_progress()).with_label("build_if_missing"),
        "prm_base_model": (missing_not_failed() & ~AutomationCondition.in_progress()).with_label("build_if_missing"),
        "world_benchmark": (missing_not_failed() & ~AutomationCondition.in_progress()).with_label("build_if_missing"),
    }
    for name in ("policy_rollouts", "mc_step_labels", "judge_step_labels", "consensus_labels",
                 "prm_evaluation", "registered_prm"):
        out[name] = on_new_data()
    out["prm_model"] = retrain_condition()
    return out


# ---- applying the policy ---------------------------------------------------


def _with_op_policies(op: OpDefinition, *, pool: str | None, retry: RetryPolicy | None,
                      extra_tags: dict[str, str]) -> OpDefinition:
    """A copy of ``op`` with a pool, a retry policy and extra tags.

    Dagster has no public "replace pool/retry on an asset" API, so the op is
    rebuilt with the same compute function, ins, outs, config and resources
    (what ``OpDefinition.with_replaced_properties`` does internally).
    Values the stage module set itself win.
    """
    return OpDefinition.dagster_internal_init(
        name=op.name,
        ins={d.name: In.from_definition(d) for d in op.input_defs},
        outs={d.name: Out.from_definition(d) for d in op.output_defs},
        compute_fn=op.compute_fn,
        config_schema=op.config_schema,
        description=op.description,
        tags={**extra_tags, **op.tags},
        required_resource_keys=op.required_resource_keys,
        code_version=op.version,
        retry_policy=op.retry_policy or retry,
        version=None,
        pool=op.pool or pool,
    )


def _names(assets_def: AssetsDefinition) -> set[str]:
    return {k.path[-1] for k in assets_def.keys}


def _apply_one(assets_def: AssetsDefinition, conds: dict[str, AutomationCondition]) -> AssetsDefinition:
    names = _names(assets_def)

    def set_condition(spec: AssetSpec) -> AssetSpec:
        cond = conds.get(spec.key.path[-1])
        return spec.replace_attributes(automation_condition=cond) if cond is not None else spec

    if names & set(conds):
        assets_def = assets_def.map_asset_specs(set_condition)

    if names & SINGLE_RUN_BACKFILL_ASSETS and assets_def.partitions_def is not None:
        assets_def = assets_def.with_attributes(backfill_policy=BackfillPolicy.single_run())

    wants_gpu = bool(names & GPU_ASSETS)
    wants_retry = bool(names & REMOTE_ASSETS)
    node = assets_def.node_def if assets_def.is_executable else None
    if (wants_gpu or wants_retry) and isinstance(node, OpDefinition):
        new_op = _with_op_policies(
            node,
            pool=GPU_POOL if wants_gpu else None,
            retry=retry_policy() if wants_retry else None,
            extra_tags=k8s_gpu_op_tags() if wants_gpu else {},
        )
        assets_def = AssetsDefinition.dagster_internal_init(
            **{**assets_def.get_attributes_dict(), "node_def": new_op}
        )
    return assets_def


def apply_orchestration(
    assets_defs: Iterable[AssetsDefinition | object],
    conds: dict[str, AutomationCondition] | None = None,
) -> list:
    """Apply conditions, pools, retries and backfill policies to loaded assets.

    Objects that are not ``AssetsDefinition`` (source assets, specs) pass
    through unchanged.
    """
    conds = conditions() if conds is None else conds
    return [_apply_one(a, conds) if isinstance(a, AssetsDefinition) else a for a in assets_defs]


def stage_selection(names: Sequence[str]) -> AssetSelection:
    """Selection by asset names that tolerates names not (yet) defined.

    ``AssetSelection.assets`` raises on an unknown key; the string form
    ``key:"x"`` matches nothing instead, so jobs keep loading while a stage
    module is still empty.
    """
    return AssetSelection.from_string(" or ".join(f'key:"{n}"' for n in names))


def all_stage_assets() -> list[str]:
    return [n for names in STAGES.values() for n in names]


__all__: list[str] = [
    "GPU_ASSETS",
    "GPU_POOL",
    "STAGES",
    "apply_orchestration",
    "conditions",
    "gpu_pool_limit",
    "on_new_data",
    "retrain_condition",
    "retry_policy",
    "stage_selection",
]
