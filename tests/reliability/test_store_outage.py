"""Object store outage: the S3 server stops in the middle of a write; nothing partial is visible, a rerun succeeds.

Each test has its own moto server (own port) so stopping it never disturbs
the session server other tests use. Moto keeps its objects in the process,
so a restarted server serves what was there before, like a store coming back.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from dagster import DagsterEventType, DagsterInstance, OutputContext, materialize
from rel_helpers import OwnS3Server, rng

from prmforge.storage import Storage, StorageError
from resources.storage import ParquetIOManager, StorageResource

_SERVERS: dict[int, OwnS3Server] = {}


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OwnS3Server, str]]:
    server = OwnS3Server()
    server.start()
    _SERVERS[server.port] = server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("PRMFORGE_S3_ENDPOINT_URL", server.endpoint)
    bucket = f"outage-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield server, f"s3://{bucket}/root"
    server.stop()
    _SERVERS.pop(server.port, None)


def _big_table(rows: int, seed: int) -> pa.Table:
    import random

    r = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 "
    return pa.table({"i": list(range(rows)), "text": ["".join(r.choices(alphabet, k=4000)) for _ in range(rows)]})


def test_server_stopped_mid_dataset_write(own_s3, fault) -> None:
    server, root = own_s3
    store = Storage(root)
    old = _big_table(10, seed=1)
    store.write_dataset("outage_blob", old, "p")
    gen = rng("s3-mid-write")
    trials, failures, in_flight_at_stop, errors_naming_url, old_visible, reruns_ok = 2, 0, 0, 0, 0, 0
    delays = []
    for t in range(trials):
        new = _big_table(4000, seed=100 + t)  # ~16 MB: one PUT that takes a while on moto
        url = store.dataset_url("outage_blob", "p")
        box: dict = {}

        def write(table=new, box=box) -> None:
            try:
                box["url"] = Storage(root).write_dataset("outage_blob", table, "p")
            except Exception as exc:  # noqa: BLE001 - inspected below
                box["error"] = exc

        th = threading.Thread(target=write)
        th.start()
        delay = gen.uniform(0.05, 0.25)
        delays.append(round(delay * 1000))
        time.sleep(delay)
        in_flight = th.is_alive()
        server.stop()
        th.join(timeout=120)
        assert in_flight, "the write finished before the server stopped: not a mid-write outage"
        in_flight_at_stop += 1
        err = box.get("error")
        assert isinstance(err, StorageError), box
        failures += 1
        assert url in str(err), str(err)  # names the storage URL
        errors_naming_url += 1
        server.start()
        # Readers see the old complete dataset, never a part of the new one.
        seen = Storage(root).read_dataset("outage_blob", "p")
        assert seen.equals(old)
        old_visible += 1
        # The rerun succeeds once the server is back.
        Storage(root).write_dataset("outage_blob", new, "p")
        assert Storage(root).read_dataset("outage_blob", "p").equals(new)
        reruns_ok += 1
        old = new
    fault("moto S3 server stopped during a ~16 MB Parquet dataset write (Storage.write_dataset)", trials,
          "write fails with StorageError naming the s3:// URL; readers see the previous complete version; "
          "rerun after restart succeeds", stop_after_ms=delays, writes_in_flight_at_stop=in_flight_at_stop,
          failed_with_url_in_error=errors_naming_url, old_version_intact=old_visible, reruns_succeeded=reruns_ok)


def test_missing_bucket_names_url(own_s3, fault) -> None:
    server, _ = own_s3
    root = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/root"
    store = Storage(root)
    url = store.dataset_url("outage_blob", "p")
    with pytest.raises(StorageError) as write_err:
        store.write_dataset("outage_blob", pa.table({"i": [1]}), "p")
    assert url in str(write_err.value)
    with pytest.raises((StorageError, FileNotFoundError)) as read_err:
        store.read_dataset("outage_blob", "p")
    assert url in str(read_err.value)
    fault("storage root in a bucket that does not exist", 2, "write and read fail with an error naming the "
          "s3:// URL", write_error=str(write_err.value)[:160], read_error=str(read_err.value)[:120])


class StopServerDuringOutput(ParquetIOManager):
    """The real IO manager; on the chosen output it stops the test's S3 server after a delay.

    The stop runs in a thread, so it lands while this output is being written
    (or just before), the way a store outage hits a running materialisation.
    """

    port: int
    trigger: str
    delay_s: float

    def handle_output(self, context: OutputContext, obj: pa.Table) -> None:
        if context.asset_key.path[-1] == self.trigger and self.port in _SERVERS:
            server = _SERVERS[self.port]
            threading.Timer(self.delay_s, server.stop).start()
            if self.delay_s == 0:
                time.sleep(0.05)
        super().handle_output(context, obj)


def _seed_source(tmp_path: Path) -> Path:
    from prmforge.world import generate_problems

    rows = [json.dumps({"problem": p.problem, "answer": p.answer}) for p in generate_problems(300, seed=9)]
    rows += ['{"problem": "truncated', json.dumps({"problem": "no answer"})]
    src = tmp_path / "seed.jsonl"
    src.write_text("\n".join(rows))
    return src


def test_server_stopped_mid_seed_materialisation(own_s3, tmp_path: Path, fault) -> None:
    from assets.seed import DROPPED, QUARANTINE, SEED, seed_problems
    from prmforge.registry import add_dataset
    from resources import build_resources

    server, root = own_s3
    registry = tmp_path / "datasets.yaml"
    add_dataset("outage", str(_seed_source(tmp_path)), adapter="generic", path=registry)
    run_config = {"ops": {"seed_problems": {"config": {"registry_path": str(registry)}}}}
    gen = rng("s3-seed")
    outputs = [SEED, QUARANTINE, DROPPED]
    trials, failed_clearly, nothing_partial, rerun_ok = 2, 0, 0, 0
    triggers = []
    for _ in range(trials):
        trigger = gen.choice(outputs)
        delay = round(gen.uniform(0.0, 0.02), 3)
        triggers.append(f"{trigger}+{int(delay * 1000)}ms")
        storage = StorageResource(root=root)
        resources = build_resources(storage=storage,
                                    io_manager=StopServerDuringOutput(storage=storage, port=server.port,
                                                                      trigger=trigger, delay_s=delay))
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions("datasets", ["outage"])
            res = materialize([seed_problems], partition_key="outage", instance=instance, resources=resources,
                              run_config=run_config, raise_on_error=False)
            assert not res.success
            failures = [e for e in res.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
            assert failures
            err = failures[0].step_failure_data.error
            text = err.message + "".join(c.message for c in _causes(err))
            assert f"{root}/datasets/" in text, text[:2000]
            failed_clearly += 1
        server.start()
        store = Storage(root)
        # Whatever is visible is a complete Parquet file: readable, and the accepted table of this input.
        for name in outputs:
            if store.dataset_exists(name, "outage"):
                table = store.read_dataset(name, "outage")
                if name == SEED:
                    assert table.num_rows == 300
        nothing_partial += 1
        # The store is back: the same materialisation succeeds.
        ok_resources = build_resources(storage=StorageResource(root=root))
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions("datasets", ["outage"])
            res = materialize([seed_problems], partition_key="outage", instance=instance, resources=ok_resources,
                              run_config=run_config)
            assert res.success
            assert all(e.passed for e in res.get_asset_check_evaluations())
        assert Storage(root).read_dataset(SEED, "outage").num_rows == 300
        assert Storage(root).read_dataset(QUARANTINE, "outage").num_rows == 2
        rerun_ok += 1
    fault("moto S3 server stopped during a real Dagster materialisation of seed_problems (while writing one of "
          "its three outputs)", trials, "step fails with an error naming the s3:// dataset URL; every visible "
          "dataset is complete; rerun after restart succeeds with its checks passing", stopped_at=triggers,
          failed_with_url_in_error=failed_clearly, only_complete_datasets_visible=nothing_partial,
          reruns_succeeded=rerun_ok)


def _causes(err) -> list:
    out = []
    while err is not None and getattr(err, "cause", None) is not None:
        err = err.cause
        out.append(err)
    return out
