"""Automation conditions, evaluated against a real instance tick by tick.

The assets here are small stand-ins with the pipeline's real names and
shape (partitioned rollouts and labels with a blocking check, an
unpartitioned PRM); the conditions, pools and retries are the ones
the stage modules declare on their decorators (``pipelines.automation``).
"""

from __future__ import annotations

import threading

import dagster as dg
import pyarrow as pa
import pytest

from assets.common import table_data_version
from assets.partitions import DATASETS_PARTITIONS_NAME, dataset_partitions
from pipelines.automation import GPU_OP_TAGS, GPU_POOL, REMOTE_RETRY, on_new_data, retrain_condition

# What the stand-in assets produce, changed by the tests between runs.
STATE: dict[str, object] = {}


@dg.asset(partitions_def=dataset_partitions)
def seed_problems() -> dg.Output:
    table = pa.table({"problem": STATE["seed"]})
    return dg.Output(table, data_version=table_data_version(table))


@dg.asset(partitions_def=dataset_partitions, deps=[seed_problems], automation_condition=on_new_data(),
          pool=GPU_POOL, op_tags=GPU_OP_TAGS, retry_policy=REMOTE_RETRY)
def policy_rollouts() -> dg.Output:
    table = pa.table({"rollout": STATE["rollouts"]})
    return dg.Output(table, data_version=table_data_version(table))


@dg.asset_check(asset=policy_rollouts, blocking=True, partitions_def=dataset_partitions)
def rollouts_contract() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=bool(STATE.get("rollouts_pass", True)))


@dg.asset(partitions_def=dataset_partitions, deps=[policy_rollouts], automation_condition=on_new_data(),
          pool=GPU_POOL, op_tags=GPU_OP_TAGS, retry_policy=REMOTE_RETRY)
def mc_step_labels() -> dg.Output:
    table = pa.table({"label": [1.0]})
    return dg.Output(table, data_version=table_data_version(table))


@dg.asset(partitions_def=dataset_partitions, automation_condition=on_new_data(), retry_policy=REMOTE_RETRY)
def consensus_labels() -> dg.Output:
    table = pa.table({"label": STATE["labels"]})
    return dg.Output(table, data_version=table_data_version(table))


@dg.asset_check(asset=consensus_labels, blocking=True, partitions_def=dataset_partitions)
def consensus_labels_valid() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=bool(STATE["check_passes"]))


@dg.asset(deps=[consensus_labels], automation_condition=retrain_condition(), pool=GPU_POOL, op_tags=GPU_OP_TAGS,
          retry_policy=REMOTE_RETRY)
def prm_model() -> dg.MaterializeResult:
    STATE["trained"] = int(STATE.get("trained", 0)) + 1
    return dg.MaterializeResult(metadata={"uri": "file:///nowhere"})


def _assets() -> list:
    return [seed_problems, policy_rollouts, mc_step_labels, consensus_labels, prm_model]


def _defs() -> dg.Definitions:
    return dg.Definitions(assets=_assets(), asset_checks=[consensus_labels_valid, rollouts_contract])


class Ticker:
    """Successive automation ticks against one instance, keeping the cursor."""

    def __init__(self, instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
        self.instance = instance
        self.defs = defs
        self.cursor = None

    def tick(self) -> dg.EvaluateAutomationConditionsResult:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return result


def _labels(instance: dg.DagsterInstance, values: list[float], check_passes: bool) -> None:
    STATE["labels"] = values
    STATE["check_passes"] = check_passes
    result = dg.materialize(
        [consensus_labels, consensus_labels_valid], instance=instance, partition_key="a", raise_on_error=False
    )
    assert result.success is check_passes  # a failed blocking check fails the run


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, ["a"])
        STATE.clear()
        yield inst


def test_prm_retrains_only_on_changed_labels_with_passing_checks(instance: dg.DagsterInstance) -> None:
    defs = _defs()
    ticker = Ticker(instance, defs)
    prm = dg.AssetKey("prm_model")

    # Nothing labelled yet: no training (blocking checks have not passed).
    assert ticker.tick().get_num_requested(prm) == 0

    _labels(instance, [0.0, 1.0], check_passes=True)
    assert ticker.tick().get_num_requested(prm) == 1
    dg.materialize([prm_model], instance=instance)
    assert ticker.tick().get_num_requested(prm) == 0

    # Same rows again: same content hash, no retraining.
    _labels(instance, [0.0, 1.0], check_passes=True)
    assert ticker.tick().get_num_requested(prm) == 0
    assert ticker.tick().get_num_requested(prm) == 0

    # New rows but the blocking check fails: no retraining, on this tick or later.
    _labels(instance, [1.0, 1.0, 0.0], check_passes=False)
    assert ticker.tick().get_num_requested(prm) == 0
    assert ticker.tick().get_num_requested(prm) == 0

    # Fixed labels that pass: the change is acted on exactly once.
    _labels(instance, [1.0, 0.0, 0.0], check_passes=True)
    assert ticker.tick().get_num_requested(prm) == 1
    dg.materialize([prm_model], instance=instance)
    assert ticker.tick().get_num_requested(prm) == 0


def test_labelling_runs_when_new_rollouts_land(instance: dg.DagsterInstance) -> None:
    ticker = Ticker(instance, _defs())
    rollouts, labels = dg.AssetKey("policy_rollouts"), dg.AssetKey("mc_step_labels")

    result = ticker.tick()  # nothing ingested: nothing to roll out or label
    assert result.get_num_requested(rollouts) == 0 and result.get_num_requested(labels) == 0

    # Ingestion lands (the sensor's run): rollouts follow; labelling once their contract passed.
    STATE.update(seed=["p1"], rollouts=["r1", "r2"])
    dg.materialize([seed_problems], instance=instance, partition_key="a")
    result = ticker.tick()
    assert result.get_requested_partitions(rollouts) == {"a"}
    assert result.get_num_requested(labels) == 0
    dg.materialize([policy_rollouts, rollouts_contract], instance=instance, partition_key="a")
    result = ticker.tick()
    assert result.get_requested_partitions(labels) == {"a"} and result.get_num_requested(rollouts) == 0
    dg.materialize([mc_step_labels], instance=instance, partition_key="a")
    result = ticker.tick()
    assert result.get_num_requested(rollouts) == 0 and result.get_num_requested(labels) == 0

    # Identical rollouts re-materialised: nothing new to label.
    dg.materialize([policy_rollouts], instance=instance, partition_key="a")
    assert ticker.tick().get_num_requested(labels) == 0

    # New rollouts land: that partition is labelled again.
    STATE["rollouts"] = ["r1", "r2", "r3"]
    dg.materialize([policy_rollouts, rollouts_contract], instance=instance, partition_key="a")
    result = ticker.tick()
    assert result.get_requested_partitions(labels) == {"a"}
    assert result.get_num_requested(rollouts) == 0
    dg.materialize([mc_step_labels], instance=instance, partition_key="a")

    # A new dataset partition waits for its ingestion, then only it flows.
    instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, ["b"])
    result = ticker.tick()
    assert result.get_num_requested(rollouts) == 0 and result.get_num_requested(labels) == 0
    STATE["seed"] = ["p2"]
    dg.materialize([seed_problems], instance=instance, partition_key="b")
    result = ticker.tick()
    assert result.get_requested_partitions(rollouts) == {"b"}
    dg.materialize([policy_rollouts, rollouts_contract], instance=instance, partition_key="b")
    assert ticker.tick().get_requested_partitions(labels) == {"b"}


def test_a_failed_rollouts_contract_stops_labelling(instance: dg.DagsterInstance) -> None:
    """In a run (blocking check) and in automation (all_deps_blocking_checks_passed)."""
    ticker = Ticker(instance, _defs())
    labels = dg.AssetKey("mc_step_labels")
    STATE.update(seed=["p1"], rollouts=["r1", "r2"], rollouts_pass=False)
    dg.materialize([seed_problems], instance=instance, partition_key="a")

    # One run over rollouts and labels: the failed blocking check stops the run before labelling.
    run = dg.materialize([policy_rollouts, rollouts_contract, mc_step_labels], instance=instance,
                         partition_key="a", raise_on_error=False)
    assert not run.success
    assert run.asset_materializations_for_node("mc_step_labels") == []
    # Automation: the new rollouts are never labelled while their contract fails, tick after tick.
    for _ in range(3):
        assert ticker.tick().get_num_requested(labels) == 0

    # The rollouts are fixed and pass: labelling starts.
    STATE.update(rollouts=["r1", "r2", "r4"], rollouts_pass=True)
    dg.materialize([policy_rollouts, rollouts_contract], instance=instance, partition_key="a")
    assert ticker.tick().get_requested_partitions(labels) == {"a"}


def test_gpu_pool_retries_and_k8s_tags_are_applied() -> None:
    by_name = {a.key.path[-1]: a for a in _assets()}
    gpu_op = by_name["prm_model"].op
    assert gpu_op.pool == GPU_POOL
    assert "nvidia.com/gpu" in gpu_op.tags["dagster-k8s/config"]
    assert gpu_op.retry_policy is not None and gpu_op.retry_policy.max_retries >= 1
    assert by_name["consensus_labels"].op.pool is None  # CPU step: no GPU slot
    assert by_name["consensus_labels"].op.retry_policy is not None
    # The op runs, with its partition and data version.
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, ["a"])
        STATE.update(rollouts=["x"])
        result = dg.materialize([by_name["policy_rollouts"]], instance=inst, partition_key="a",
                                selection=[by_name["policy_rollouts"]])
        assert result.success
        event = inst.get_latest_materialization_event(dg.AssetKey("policy_rollouts"))
        assert event.tags["dagster/data_version"] == table_data_version(pa.table({"rollout": ["x"]})).value


def test_gpu_pool_limits_concurrent_gpu_steps() -> None:
    """With the pool limit at 1, a GPU step waits while another run holds the slot."""
    with dg.instance_for_test() as inst:
        storage = inst.event_log_storage
        storage.set_concurrency_slots(GPU_POOL, 1)
        holder = "another-gpu-run"
        assert storage.claim_concurrency_slot(GPU_POOL, holder, "gpu_step").is_claimed
        STATE.clear()
        prm = [a for a in _assets() if a.key.path[-1] == "prm_model"]
        done = threading.Event()
        outcome: dict[str, bool] = {}

        def run() -> None:
            outcome["success"] = dg.materialize(prm, instance=inst).success
            done.set()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        assert not done.wait(6), "the GPU step ran although the only gpu slot was taken"
        assert "trained" not in STATE
        storage.free_concurrency_slots_for_run(holder)
        assert done.wait(120), "the GPU step never got the freed slot"
        assert outcome["success"] and STATE["trained"] == 1
        info = storage.get_concurrency_info(GPU_POOL)
        assert info.slot_count == 1 and info.active_slot_count == 0  # released after the step


def test_real_definitions_carry_the_policy() -> None:
    """Every stage asset of the code location declares its run policy on its decorator."""
    from pipelines.automation import STAGE_GROUPS
    from pipelines.definitions import build_defs

    graph = build_defs().resolve_asset_graph()
    gpu = {"policy_rollouts", "mc_step_labels", "judge_step_labels", "prm_model"}
    labels = {"policy_model": "build_if_missing", "prm_base_model": "build_if_missing",
              "world_benchmark": "build_if_missing", "prm_model": "retrain_on_new_labels",
              **{n: "on_new_data" for n in ("policy_rollouts", "mc_step_labels", "judge_step_labels",
                                            "consensus_labels", "prm_evaluation", "registered_prm")}}
    stage_assets = {k: graph.get(k) for k in graph.get_all_asset_keys() if graph.get(k).group_name in STAGE_GROUPS}
    assert {k.path[-1] for k in stage_assets} >= set(labels) | {"seed_problems"}
    for key, node in stage_assets.items():
        name = key.path[-1]
        cond = node.automation_condition
        assert (cond.get_label() if cond else None) == labels.get(name), name
        assert node.pools == ({GPU_POOL} if name in gpu else set()), name
        op = node.assets_def.op
        assert op.retry_policy is not None and op.retry_policy.max_retries >= 1, name
        assert ("dagster-k8s/config" in op.tags) == (name in gpu), name
    seed = graph.get(dg.AssetKey("seed_problems"))
    assert seed.backfill_policy == dg.BackfillPolicy.single_run()
    assert graph.get(dg.AssetKey("policy_rollouts")).backfill_policy is None  # one dataset per run
