"""Drop a JSONL under incoming/ and, with no other action, a new PRM is trained, evaluated and gated.

The test plays the Dagster daemon with the code the daemon runs: ticks of
``new_dataset_sensor`` (``build_sensor_context``) and of the automation
conditions (``evaluate_automation_conditions``), executing every requested
run in process against one instance, until nothing more is requested. No
asset is materialised by the test itself: every run is one the sensor or an
automation condition asked for. Tiny profile, embedded default (local
storage, sqlite MLflow). The dropped files hold `easy` world problems
exported as JSONL (``problem``, ``answer``, ``meta``): the tiny policy is a
world policy, so its rollouts on them are partly right and partly wrong and
every stage has real rows to work on.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import dagster as dg
import pytest

from pipelines.jobs import FULL_PIPELINE_JOB
from pipelines.sensors import new_dataset_sensor
from prmforge.storage import Storage
from prmforge.world import generate_problems, problem_from_meta
from resources.storage import StorageResource

pytestmark = pytest.mark.slow


class DaemonPlayer:
    """Sensor ticks and automation ticks, with every requested run executed in process."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs = defs
        self.instance = instance
        self.job = defs.resolve_job_def(FULL_PIPELINE_JOB)
        self.graph = defs.resolve_asset_graph()
        self.sensor_cursor: str | None = None
        self.automation_cursor = None
        self.runs: list[tuple[str, str | None, list[str], bool]] = []  # (trigger, partition, assets, success)

    def _execute(self, trigger: str, keys: list[dg.AssetKey], partition: str | None) -> None:
        result = self.job.execute_in_process(instance=self.instance, partition_key=partition,
                                             asset_selection=keys, raise_on_error=False,
                                             tags={"prmforge/trigger": trigger})
        self.runs.append((trigger, partition, sorted(k.path[-1] for k in keys), result.success))

    def sensor_tick(self) -> int:
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.sensor_cursor,
                                      resources={"storage": StorageResource()})
        result = new_dataset_sensor(ctx)
        if not isinstance(result, dg.SensorResult):
            self.sensor_cursor = ctx.cursor
            return 0
        self.sensor_cursor = result.cursor
        for req in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        seed = dg.AssetSelection.from_string('key:"seed_problems"').required_multi_asset_neighbors()
        keys = sorted(seed.resolve(self.graph), key=str)
        for req in result.run_requests:
            self._execute("sensor", keys, req.partition_key)
        return len(result.run_requests)

    def automation_tick(self) -> int:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance,
                                                   cursor=self.automation_cursor)
        self.automation_cursor = result.cursor
        by_partition: dict[str | None, list[dg.AssetKey]] = defaultdict(list)
        for key in self.graph.get_all_asset_keys():
            for partition in result.get_requested_partitions(key):
                by_partition[partition].append(key)
        # Per-dataset runs first, then the runs over all datasets (what the daemon's runs amount to).
        for partition in sorted(p for p in by_partition if p is not None):
            self._execute("automation", by_partition[partition], partition)
        if None in by_partition:
            self._execute("automation", by_partition[None], None)
        return len(by_partition)

    def until_quiet(self, max_ticks: int = 15) -> None:
        quiet = 0
        for _ in range(max_ticks):
            requested = self.sensor_tick() + self.automation_tick()
            quiet = quiet + 1 if requested == 0 else 0
            if quiet == 2:  # two empty ticks in a row: remembered triggers are spent too
                return
        raise AssertionError(f"still requesting runs after {max_ticks} ticks: {self.runs[-5:]}")


def _materialisations(instance: dg.DagsterInstance, asset: str) -> list:
    return list(instance.fetch_materializations(dg.AssetKey(asset), limit=100).records)


def empty_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dg.Definitions, Storage]:
    """The code location with an empty registry: a file dropped in incoming/ is ingested at once, never retried."""
    registry = tmp_path / "datasets.yaml"
    registry.write_text("datasets: {}\n")
    monkeypatch.setenv("PRMFORGE_REGISTRY", str(registry))
    monkeypatch.setenv("PRMFORGE_INCOMING_SETTLE_S", "0")
    monkeypatch.setenv("PRMFORGE_MAX_RETRIES", "0")
    from pipelines.definitions import build_defs

    return build_defs(), Storage()


def test_dropped_jsonl_flows_to_a_new_gated_prm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    defs, storage = empty_location(tmp_path, monkeypatch)
    lines = [json.dumps({"problem": p.problem, "answer": p.answer, "meta": p.meta})
             for p in generate_problems(20, seed=11, difficulty="easy")]

    with dg.instance_for_test() as instance:
        player = DaemonPlayer(defs, instance)
        player.until_quiet()
        assert not _materialisations(instance, "prm_model")  # no data yet: nothing trained

        # The user drops a file. Nothing else.
        storage.write_bytes_atomic(storage.path("incoming", "dropped-a", "part-1.jsonl"),
                                   ("\n".join(lines[:10]) + "\n").encode())
        player.until_quiet()
        failed = [r for r in player.runs if not r[3]]
        assert not failed, f"failed runs: {failed}"
        for asset in ("seed_problems", "policy_rollouts", "mc_step_labels", "judge_step_labels",
                      "consensus_labels"):
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
        # real rows at every stage: world meta kept (oracle-ready), labels of both kinds to train on
        seed = storage.read_dataset("seed_problems", "dropped-a").to_pylist()
        assert len(seed) == 10 and all(problem_from_meta(json.loads(r["meta"])).problem == r["problem"] for r in seed)
        labels = [x for row in storage.read_dataset("consensus_labels", "dropped-a").to_pylist() for x in row["labels"]]
        assert labels, "no consensus rows"
        assert len(_materialisations(instance, "prm_model")) == 1
        first_eval = _materialisations(instance, "prm_evaluation")
        gate = _materialisations(instance, "registered_prm")
        assert len(first_eval) == 1 and len(gate) == 1
        meta = gate[0].asset_materialization.metadata
        assert meta["version"].value == "1" and "gate_reason" in meta

        # A second drop, another dataset: a new PRM version trained, evaluated and gated.
        storage.write_bytes_atomic(storage.path("incoming", "dropped-b", "part-1.jsonl"),
                                   ("\n".join(lines[10:]) + "\n").encode())
        player.until_quiet()
        assert not [r for r in player.runs if not r[3]]
        assert len(_materialisations(instance, "prm_model")) == 2
        assert len(_materialisations(instance, "prm_evaluation")) == 2
        gate = _materialisations(instance, "registered_prm")
        assert len(gate) == 2 and gate[0].asset_materialization.metadata["version"].value == "2"

        # Nothing new: quiet, no retraining.
        player.until_quiet()
        assert len(_materialisations(instance, "prm_model")) == 2
