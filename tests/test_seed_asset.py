"""Real Dagster materialisations of ``seed_problems`` on a local root and on an S3 root."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, materialize

from assets.seed import seed_problems
from prmforge.registry import add_dataset
from prmforge.storage import Storage
from resources import build_resources
from resources.storage import StorageResource

ROWS = [
    json.dumps({"question": "Ann has 3 pens and buys 4 more. How many pens?", "answer": "3+4=<<3+4=7>>7\n#### 7"}),
    json.dumps({"question": "Bob has 1,000 coins and spends 1 coin. How many?", "answer": "w\n#### 999"}),
    json.dumps({"question": "Ann has 3 pens and buys 4 more. How many pens?", "answer": "again\n#### 7"}),  # dup
    json.dumps({"question": "No final answer line here?", "answer": "forgot the marker"}),  # unparseable
    json.dumps({"question": "", "answer": "w\n#### 1"}),  # missing problem
    '{"question": "truncated',  # malformed
]


def _materialize(root: str, key: str, registry: Path, instance: DagsterInstance):
    instance.add_dynamic_partitions("datasets", [key])
    return materialize(
        [seed_problems],
        partition_key=key,
        instance=instance,
        resources=build_resources(storage=StorageResource(root=root)),
        run_config={"ops": {"seed_problems": {"config": {"registry_path": str(registry)}}}},
    )


def _assert_run(result, key: str) -> None:
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"rows_conserved", "seed_quality", "quarantine_contract", "dropped_contract"}
    assert all(e.passed for e in checks.values()), {k: e.metadata for k, e in checks.items()}
    mats = {m.asset_key.path[-1]: m for m in result.get_asset_materialization_events()}
    seed_meta = mats["seed_problems"].materialization.metadata
    assert seed_meta["rows_read"].value == 6 and seed_meta["accepted"].value == 2
    assert seed_meta["quarantined"].value == 3 and seed_meta["deduplicated"].value == 1
    assert seed_meta["quarantine_reasons"].value == {"malformed_record": 1, "missing_problem": 1,
                                                     "unparseable_answer": 1}
    assert mats["seed_problems"].materialization.partition == key


def _assert_tables(seed, quarantine, dropped) -> None:
    assert sorted(seed.column("answer").to_pylist()) == ["7", "999"]
    assert set(seed.column("dataset").to_pylist()) == {"mixed"}
    assert sorted(quarantine.column("reason").to_pylist()) == ["malformed_record", "missing_problem",
                                                               "unparseable_answer"]
    assert dropped.column("kind").to_pylist() == ["duplicate"]


def test_materialise_local_root_and_read_with_pyarrow(local_root: str, tmp_path: Path) -> None:
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(ROWS))
    registry = tmp_path / "datasets.yaml"
    add_dataset("mixed", str(src), adapter="gsm8k", path=registry)
    with DagsterInstance.ephemeral() as instance:
        result = _materialize(local_root, "mixed", registry, instance)
        _assert_run(result, "mixed")
        # the downstream view of the checks: latest evaluation per check recorded on the instance
        assert instance.get_latest_materialization_event(AssetKey("seed_problems")) is not None
    base = Path(Storage(local_root).base) / "datasets"
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{base}/seed_problems/*/data.parquet')").fetchall()[0][0]
    assert n == 2  # the documented DuckDB query
    _assert_tables(pq.read_table(base / "seed_problems" / "mixed" / "data.parquet"),
                   pq.read_table(base / "seed_problems_quarantine" / "mixed" / "data.parquet"),
                   pq.read_table(base / "seed_problems_dropped" / "mixed" / "data.parquet"))


def test_materialise_s3_root_and_read_with_pyarrow(s3_root: str, s3_server, tmp_path: Path) -> None:
    import s3fs

    s3 = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server.endpoint)
    bucket_root = s3_root.removeprefix("s3://")
    # the source itself lives on S3 too
    s3.pipe(f"{bucket_root}/sources/mixed.jsonl", "\n".join(ROWS).encode())
    registry = tmp_path / "datasets.yaml"
    add_dataset("mixed", f"{s3_root}/sources/mixed.jsonl", adapter="gsm8k", path=registry)
    with DagsterInstance.ephemeral() as instance:
        _assert_run(_materialize(s3_root, "mixed", registry, instance), "mixed")

    def read(name: str):
        with s3.open(f"{bucket_root}/datasets/{name}/mixed/data.parquet", "rb") as fh:
            return pq.read_table(fh)

    _assert_tables(read("seed_problems"), read("seed_problems_quarantine"), read("seed_problems_dropped"))


def test_incoming_partition_on_s3_and_cross_partition_dedupe(s3_root: str, s3_server, tmp_path: Path) -> None:
    import s3fs

    s3 = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server.endpoint)
    bucket_root = s3_root.removeprefix("s3://")
    s3.pipe(f"{bucket_root}/incoming/drop/part-1.csv",
            b'problem,answer\n"Ann has 3 pens and buys 4 more. How many pens?",7\n"New one?",5\n')
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(ROWS))
    registry = tmp_path / "datasets.yaml"
    add_dataset("mixed", str(src), adapter="gsm8k", path=registry)
    with DagsterInstance.ephemeral() as instance:
        assert _materialize(s3_root, "mixed", registry, instance).success
        result = _materialize(s3_root, "drop", registry, instance)  # not registered: incoming/drop/
        assert result.success
        assert all(e.passed for e in result.get_asset_check_evaluations())
    with s3.open(f"{bucket_root}/datasets/seed_problems/drop/data.parquet", "rb") as fh:
        assert pq.read_table(fh).column("problem").to_pylist() == ["New one?"]
    with s3.open(f"{bucket_root}/datasets/seed_problems_dropped/drop/data.parquet", "rb") as fh:
        (dup,) = pq.read_table(fh).to_pylist()
    assert dup["kind"] == "duplicate" and dup["matched"].startswith("mixed:")


def test_unreachable_source_fails_the_run_with_the_dataset_named(local_root: str, tmp_path: Path) -> None:
    registry = tmp_path / "datasets.yaml"
    add_dataset("ghost", "hub:nobody/not-cached", path=registry)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("datasets", ["ghost"])
        with pytest.raises(Exception, match="nobody/not-cached"):
            materialize([seed_problems], partition_key="ghost", instance=instance,
                        resources=build_resources(storage=StorageResource(root=local_root)),
                        run_config={"ops": {"seed_problems": {"config": {"registry_path": str(registry)}}}})
