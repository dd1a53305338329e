"""The new-dataset sensor, tick by tick, on a local root and on S3 (moto server)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.partitions import DATASETS_PARTITIONS_NAME
from pipelines.sensors import new_dataset_sensor
from prmforge.registry import RegistryError, load_registry
from prmforge.storage import Storage
from resources.storage import StorageResource

ROW = {"question": "Tom has 3 apples and buys 2 more. How many apples?", "answer": "3 + 2 = 5\n#### 5"}


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "datasets.yaml"
    path.write_text("datasets:\n  reg-a:\n    source: world\n    adapter: world\n", encoding="utf-8")
    monkeypatch.setenv("PRMFORGE_REGISTRY", str(path))
    monkeypatch.setenv("PRMFORGE_INCOMING_SETTLE_S", "0")
    return path


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def drop(storage: Storage, dataset: str, name: str, rows: int = 1) -> None:
    data = "".join(json.dumps(ROW) + "\n" for _ in range(rows)).encode()
    storage.write_bytes_atomic(storage.path("incoming", dataset, name), data)


class Daemon:
    """Evaluates the sensor the way the daemon does: the cursor only advances
    after a successful tick, and requested partitions are then added."""

    def __init__(self, instance: dg.DagsterInstance, root: str) -> None:
        self.instance = instance
        self.resources = {"storage": StorageResource(root=root)}
        self.cursor: str | None = None

    def evaluate(self, commit: bool = True):
        ctx = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, resources=self.resources)
        result = new_dataset_sensor(ctx)
        if commit:
            self.cursor = ctx.cursor if not isinstance(result, dg.SensorResult) else result.cursor
            if isinstance(result, dg.SensorResult):
                for req in result.dynamic_partitions_requests or []:
                    self.instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        return result


def requests(result) -> dict[str, str]:
    """partition -> run key of a tick's run requests."""
    if isinstance(result, dg.SkipReason):
        return {}
    return {r.partition_key: r.run_key for r in result.run_requests}


def test_new_file_and_new_registry_entry_add_partitions_and_request_ingestion(
    registry: Path, instance: dg.DagsterInstance, local_root: str
) -> None:
    storage = Storage(local_root)
    drop(storage, "dropped-ds", "part-1.jsonl")
    daemon = Daemon(instance, local_root)

    result = daemon.evaluate()
    assert isinstance(result, dg.SensorResult)
    assert set(requests(result)) == {"dropped-ds", "reg-a"}
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == ["dropped-ds", "reg-a"]
    assert {r.tags["prmforge/trigger"] for r in result.run_requests} == {"incoming", "registry"}
    assert sorted(instance.get_dynamic_partitions(DATASETS_PARTITIONS_NAME)) == ["dropped-ds", "reg-a"]
    # The dropped folder got a registry entry so ingestion knows where to read.
    assert load_registry()["dropped-ds"].source == "incoming"

    # Nothing new: no request, no duplicate.
    assert isinstance(daemon.evaluate(), dg.SkipReason)

    # A second file in a known dataset: ingestion again, no new partition.
    drop(storage, "dropped-ds", "part-2.jsonl")
    result = daemon.evaluate()
    assert set(requests(result)) == {"dropped-ds"}
    assert not result.dynamic_partitions_requests

    # A new registry entry (e.g. `prmforge add-dataset`) is picked up too.
    from prmforge.registry import add_dataset

    add_dataset("reg-b", "world", adapter="world")
    assert set(requests(daemon.evaluate())) == {"reg-b"}
    assert isinstance(daemon.evaluate(), dg.SkipReason)


def test_failed_tick_loses_nothing_and_repeats_nothing(
    registry: Path, instance: dg.DagsterInstance, local_root: str
) -> None:
    storage = Storage(local_root)
    daemon = Daemon(instance, local_root)
    drop(storage, "ds", "a.jsonl")
    first = requests(daemon.evaluate())
    assert set(first) == {"ds", "reg-a"}

    drop(storage, "ds", "b.jsonl")
    good_registry = registry.read_text(encoding="utf-8")
    registry.write_text("datasets: [this is: not a mapping\n", encoding="utf-8")  # a typo breaks the tick
    with pytest.raises(RegistryError):
        daemon.evaluate()
    registry.write_text(good_registry, encoding="utf-8")

    # The cursor did not advance: b.jsonl is requested now, a.jsonl is not requested again.
    ctx_cursor = daemon.cursor
    second = daemon.evaluate(commit=False)
    assert set(requests(second)) == {"ds"}
    assert requests(second)["ds"] != first["ds"]
    # Re-evaluating the same tick (a crash before the cursor was stored) yields
    # the same run key, which Dagster deduplicates: no file runs twice.
    assert daemon.cursor == ctx_cursor
    assert requests(daemon.evaluate())["ds"] == requests(second)["ds"]
    assert isinstance(daemon.evaluate(), dg.SkipReason)


def test_unfinished_and_invalid_inputs_wait_or_are_reported(
    registry: Path, instance: dg.DagsterInstance, local_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(local_root)
    daemon = Daemon(instance, local_root)
    daemon.evaluate()  # registry entries

    # A writer's temporary file is not picked up; the finished file is.
    tmp = Path(storage.path("incoming", "late", ".tmp-upload"))
    tmp.parent.mkdir(parents=True)
    tmp.write_text("partial")
    assert isinstance(daemon.evaluate(), dg.SkipReason)

    # A file younger than the settle time waits for a later tick (not recorded, not lost).
    monkeypatch.setenv("PRMFORGE_INCOMING_SETTLE_S", "3600")
    drop(storage, "late", "rows.jsonl")
    skip = daemon.evaluate()
    assert isinstance(skip, dg.SkipReason) and "settling" in skip.skip_message
    monkeypatch.setenv("PRMFORGE_INCOMING_SETTLE_S", "0")
    assert set(requests(daemon.evaluate())) == {"late"}

    # A folder name that cannot be a dataset key is reported, and never blocks others.
    drop(storage, "Bad Name!", "x.jsonl")
    drop(storage, "good", "x.jsonl")
    ctx = dg.build_sensor_context(instance=instance, cursor=daemon.cursor, resources=daemon.resources)
    result = new_dataset_sensor(ctx)
    assert set(requests(result)) == {"good"}

    # A file rewritten in place is new data.
    daemon.evaluate()
    drop(storage, "late", "rows.jsonl", rows=3)
    assert set(requests(daemon.evaluate())) == {"late"}


def test_sensor_reads_an_s3_incoming_prefix(registry: Path, instance: dg.DagsterInstance, s3_root: str) -> None:
    storage = Storage(s3_root)
    daemon = Daemon(instance, s3_root)
    drop(storage, "s3-ds", "rows.jsonl")
    assert set(requests(daemon.evaluate())) == {"s3-ds", "reg-a"}
    assert isinstance(daemon.evaluate(), dg.SkipReason)
    drop(storage, "s3-ds", "more.jsonl")
    assert set(requests(daemon.evaluate())) == {"s3-ds"}


def test_sensor_is_in_the_code_location_and_targets_ingestion() -> None:
    from pipelines.definitions import defs

    sensor = defs.resolve_sensor_def("new_dataset_sensor")
    assert sensor.job_name == "seed_job"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # Automation conditions are evaluated without anyone turning a sensor on.
    automation = defs.resolve_sensor_def("prmforge_automation")
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    targeted = automation.asset_selection.resolve(graph)
    assert {dg.AssetKey("prm_model"), dg.AssetKey("consensus_labels")} <= targeted
