"""A backfill of the seed stage over many datasets runs as ONE run, executed by the backfill daemon.

Real parts: the backfill is submitted by ``prmforge backfill --daemon``'s own
function (``cli.submit_backfill``) to a persistent instance with the config
the CLI ships, the code location is the project's ``build_defs`` loaded from
a workspace file, and a real ``dagster-daemon`` process plans the backfill and
launches its runs through a code server; the storage root is a bucket on the
moto S3 server.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from daemon_helpers import dagster_daemon, wait_for, write_workspace

from assets.common import table_data_version
from assets.partitions import DATASETS_PARTITIONS_NAME
from assets.seed import DROPPED, QUARANTINE, SEED
from pipelines import cli
from prmforge.registry import add_dataset
from prmforge.storage import Storage

REPO = Path(__file__).resolve().parents[1]
SEED_ASSETS = (SEED, QUARANTINE, DROPPED)
# Dagster's run tags (as the UI shows them).
DATA_VERSION_TAG = "dagster/data_version"
BACKFILL_ID_TAG = "dagster/backfill"
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
# Partition order is the order they are added; "ghost" (an unreachable source) sits inside the range.
KEYS = ["alpha", "ghost", "beta", "gamma"]
GOOD = ["alpha", "beta", "gamma"]


def _rows(*pairs: tuple[str, str]) -> str:
    return "\n".join(json.dumps({"question": q, "answer": f"w\n#### {a}"}) for q, a in pairs)


@pytest.fixture
def location(tmp_path: Path, s3_root: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Registry of three good datasets and one unreachable one; a code-location file on ``s3_root``."""
    registry = tmp_path / "datasets.yaml"
    sources = {
        "alpha": _rows(("Ann has 3 pens and buys 4 more. How many pens?", "7"), ("What is 2 plus 2?", "4")),
        "beta": _rows(("Bob has 10 coins and spends 1. How many?", "9")),
        # The first problem is alpha's: dedupe across partitions drops it, as a run after alpha's would.
        "gamma": _rows(("Ann has 3 pens and buys 4 more. How many pens?", "7"), ("What is 5 times 6?", "30")),
    }
    for key, text in sources.items():
        (tmp_path / f"{key}.jsonl").write_text(text)
        add_dataset(key, str(tmp_path / f"{key}.jsonl"), adapter="gsm8k", path=registry)
    add_dataset("ghost", "hub:nobody/not-cached", path=registry)
    monkeypatch.setenv("PRMFORGE_REGISTRY", str(registry))
    monkeypatch.setenv("PRMFORGE_MAX_RETRIES", "0")  # the ghost fails once, not four times
    defs_file = tmp_path / "location.py"
    # Only the asset graph: no sensor or automation launches runs beside the backfills this test drives.
    defs_file.write_text(
        "import dagster as dg\n"
        "from pipelines.definitions import build_defs\n"
        "from resources.storage import StorageResource\n"
        f"full = build_defs(storage=StorageResource(root={s3_root!r}))\n"
        "defs = dg.Definitions(assets=full.assets, asset_checks=full.asset_checks, resources=full.resources,\n"
        "                      executor=full.executor)\n"
    )
    return defs_file


def _run_backfill(instance: dg.DagsterInstance, defs: dg.Definitions, log: Path) -> str:
    """Submit a backfill over KEYS and wait for the running daemon to finish it (one tick is 30 s)."""
    backfill_id = cli.submit_backfill(defs, instance, KEYS, "key:seed_problems", title="seed backfill test")
    wait_for(lambda: instance.get_backfill(backfill_id).status.value != "REQUESTED",
             f"the daemon to finish backfill {backfill_id}", 600, log, interval=1)
    return backfill_id


def _only_run(instance: dg.DagsterInstance, backfill_id: str) -> dg.DagsterRun:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
    assert len(runs) == 1, [(r.run_id, r.tags.get("dagster/partition")) for r in runs]
    return runs[0]


def test_backfill_of_many_datasets_is_one_run_with_per_partition_results(
        location: Path, s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The CLI's instance config; the daemon runs no automation here (see ``location``).
    (home / "dagster.yaml").write_text(cli.DAGSTER_YAML + "auto_materialize:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    workspace = write_workspace(tmp_path / "workspace.yaml", location, "defs", "prmforge")
    log = tmp_path / "daemon.log"
    with dg.DagsterInstance.get() as instance, dagster_daemon(home, workspace, log):
        from pipelines.definitions import build_defs
        from resources.storage import StorageResource

        defs = build_defs(storage=StorageResource(root=s3_root))
        instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, KEYS)
        storage = Storage(s3_root)

        backfill_id = _run_backfill(instance, defs, log)

        # ONE run over the whole range; it fails because of the ghost, after writing the others.
        run = _only_run(instance, backfill_id)
        assert tuple(run.tags[t] for t in RANGE_TAGS) == ("alpha", "gamma")
        assert run.status == dg.DagsterRunStatus.FAILURE
        failure = "\n".join(e.dagster_event.event_specific_data.error.to_string()
                            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE))
        assert "1 of 4 datasets could not be ingested" in failure and "nobody/not-cached" in failure

        # Every good partition: its three files, and one materialisation each whose data version is
        # the content hash of exactly that file.
        for name in SEED_ASSETS:
            for key in GOOD:
                table = storage.read_dataset(name, key)
                (record,) = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[key]), limit=5).records
                assert record.run_id == run.run_id
                assert record.asset_materialization.tags[DATA_VERSION_TAG] == table_data_version(table).value
                assert record.asset_materialization.metadata["rows"].value == table.num_rows
            assert not storage.dataset_exists(name, "ghost")
        assert storage.read_dataset(SEED, "beta").column("dataset").to_pylist() == ["beta"]
        # Dedupe across partitions saw alpha, written earlier in the same run.
        assert storage.read_dataset(SEED, "gamma").column("answer").to_pylist() == ["30"]
        (dup,) = storage.read_dataset(DROPPED, "gamma").to_pylist()
        assert dup["kind"] == "duplicate" and dup["matched"].startswith("alpha:")

        # Both blocking checks were evaluated per partition, and passed.
        evaluations = {
            (e.dagster_event.event_specific_data.check_name, e.dagster_event.event_specific_data.partition):
                e.dagster_event.event_specific_data
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        }
        assert set(evaluations) == {(c, k) for c in ("rows_conserved", "seed_quality", "quarantine_contract",
                                                                  "dropped_contract") for k in GOOD}
        assert all(ev.passed and ev.blocking for ev in evaluations.values())
        assert all(ev.target_materialization_data.run_id == run.run_id for ev in evaluations.values())

        # The backfill knows which partitions failed: only the ghost.
        data = instance.get_backfill(backfill_id).asset_backfill_data
        for name in SEED_ASSETS:
            key = dg.AssetKey(name)
            assert sorted(data.materialized_subset.get_partitions_subset(key).get_partition_keys()) == sorted(GOOD)
            assert list(data.failed_and_downstream_subset.get_partitions_subset(key).get_partition_keys()) == [
                "ghost"]
        assert instance.get_backfill(backfill_id).status.value == "COMPLETED_FAILED"

        # A second backfill after only beta's source changed: again one run, and only beta's data
        # version changes (what the downstream automation conditions read, per partition).
        before = instance.event_log_storage.get_maximum_record_id()
        (tmp_path / "beta.jsonl").write_text(_rows(("Bob has 10 coins and spends 1. How many?", "9"),
                                                   ("Cy has 8 hats and loses 2. How many?", "6")))
        second = _run_backfill(instance, defs, log)
        assert _only_run(instance, second).run_id != run.run_id
        for name in (SEED, DROPPED):
            changed = instance.event_log_storage.get_updated_data_version_partitions(
                dg.AssetKey(name), GOOD, before)
            assert changed == ({"beta"} if name == SEED else set()), name
        assert storage.read_dataset(SEED, "beta").num_rows == 2


def test_io_manager_refuses_a_range_output_instead_of_writing_it_unpartitioned(local_root: str) -> None:
    """A plain table output over a partition range must fail loudly, never land at the unpartitioned path."""
    import pyarrow as pa

    from assets.partitions import dataset_partitions
    from resources import build_resources
    from resources.storage import StorageResource

    @dg.asset(name="range_table", partitions_def=dataset_partitions)
    def range_table():  # noqa: ANN202 - a local annotation would not resolve (postponed annotations)
        return pa.table({"x": [1]})

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, ["a", "b"])
        result = dg.materialize([range_table], instance=instance, raise_on_error=False,
                                resources=build_resources(storage=StorageResource(root=local_root)),
                                tags=dict(zip(RANGE_TAGS, ("a", "b"), strict=True)))
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "this run covers 2 partitions" in failure.event_specific_data.error.to_string()
    storage = Storage(local_root)
    assert not storage.exists(storage.path("datasets", "range_table"))
