"""Object store outage: the S3 server stops in the middle of a write; nothing partial is visible, a rerun succeeds.

Each test has its own moto server (own port) so stopping it never disturbs
the session server other tests use. Moto keeps its objects in the process,
so a restarted server serves what was there before, like a store coming back.

"In the middle" is made exact, not a matter of timing: clients reach the
server through a TCP relay that, once armed, forwards a seeded random number
of request bytes, then holds the rest, stops the server and drops every
connection. The write is therefore provably half sent when the store dies.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from dagster import DagsterEventType, DagsterInstance, OutputContext, materialize
from rel_helpers import CutRelay, OwnS3Server, rng

from prmforge.storage import Storage, StorageError
from resources.storage import ParquetIOManager, StorageResource

_RELAYS: dict[int, tuple[CutRelay, OwnS3Server]] = {}


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OwnS3Server, CutRelay, str]]:
    server = OwnS3Server()
    server.start()
    relay = CutRelay(server.port)
    relay.start()
    _RELAYS[relay.port] = (relay, server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("PRMFORGE_S3_ENDPOINT_URL", relay.endpoint)
    bucket = f"outage-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield server, relay, f"s3://{bucket}/root"
    relay.close()
    server.stop()
    _RELAYS.pop(relay.port, None)


def _back(server: OwnS3Server, relay: CutRelay) -> None:
    """The store returns: server and relay listen again on their ports."""
    server.start()
    relay.start()


def _big_table(rows: int, seed: int) -> pa.Table:
    import random

    r = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 "
    return pa.table({"i": list(range(rows)), "text": ["".join(r.choices(alphabet, k=4000)) for _ in range(rows)]})


def test_server_stopped_mid_dataset_write(own_s3, fault) -> None:
    server, relay, root = own_s3
    store = Storage(root)
    old = _big_table(10, seed=1)
    store.write_dataset("outage_blob", old, "p")
    gen = rng("s3-mid-write")
    trials, errors_naming_url, old_visible, reruns_ok = 3, 0, 0, 0
    cut_after = []
    for t in range(trials):
        new = _big_table(1500, seed=100 + t)  # ~6 MB in one PUT
        url = store.dataset_url("outage_blob", "p")
        after = gen.randint(256 * 1024, 4 * 1024 * 1024)
        relay.arm(after, server.stop)
        with pytest.raises(StorageError) as err:
            Storage(root).write_dataset("outage_blob", new, "p")
        assert relay.cut.is_set() and not server.running  # the store died mid-request
        cut_after.append(after)
        assert url in str(err.value), str(err.value)  # names the storage URL
        errors_naming_url += 1
        _back(server, relay)
        # Readers see the old complete dataset, never a part of the new one.
        assert Storage(root).read_dataset("outage_blob", "p").equals(old)
        old_visible += 1
        # The rerun succeeds once the server is back.
        Storage(root).write_dataset("outage_blob", new, "p")
        assert Storage(root).read_dataset("outage_blob", "p").equals(new)
        reruns_ok += 1
        old = new
    fault("moto S3 server stopped in the middle of a ~6 MB Parquet dataset PUT (Storage.write_dataset), cut "
          "after a seeded random number of request bytes", trials,
          "write fails with StorageError naming the s3:// URL; readers see the previous complete version; "
          "rerun after restart succeeds", request_bytes_sent_before_stop=cut_after,
          failed_with_url_in_error=errors_naming_url, old_version_intact=old_visible, reruns_succeeded=reruns_ok)


def test_missing_bucket_names_url(own_s3, fault) -> None:
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
    """The real IO manager; writing the chosen output arms the relay, so the store dies mid-PUT."""

    relay_port: int
    trigger: str
    after_bytes: int

    def handle_output(self, context: OutputContext, obj: pa.Table) -> None:
        if context.asset_key.path[-1] == self.trigger and self.relay_port in _RELAYS:
            relay, server = _RELAYS[self.relay_port]
            relay.arm(self.after_bytes, server.stop)
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

    server, relay, root = own_s3
    registry = tmp_path / "datasets.yaml"
    add_dataset("outage", str(_seed_source(tmp_path)), adapter="generic", path=registry)
    run_config = {"ops": {"seed_problems": {"config": {"registry_path": str(registry)}}}}
    gen = rng("s3-seed")
    outputs = [SEED, QUARANTINE, DROPPED]
    trials, failed_clearly, nothing_partial, rerun_ok = 2, 0, 0, 0
    triggers = []
    for _ in range(trials):
        trigger = gen.choice(outputs)
        after = gen.randint(64, 900)  # inside the PUT's headers or body
        storage = StorageResource(root=root)
        resources = build_resources(storage=storage,
                                    io_manager=StopServerDuringOutput(storage=storage, relay_port=relay.port,
                                                                      trigger=trigger, after_bytes=after))
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions("datasets", ["outage"])
            res = materialize([seed_problems], partition_key="outage", instance=instance, resources=resources,
                              run_config=run_config, raise_on_error=False)
            assert not res.success
            assert relay.cut.is_set()
            triggers.append(f"{trigger} after {after} request bytes")
            failures = [e for e in res.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
            assert failures
            err = failures[0].step_failure_data.error
            text = err.message + "".join(c.message for c in _causes(err))
            assert f"{root}/datasets/" in text, text[:2000]
            failed_clearly += 1
        _back(server, relay)
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
    fault("moto S3 server stopped during a real Dagster materialisation of seed_problems, in the middle of the "
          "PUT of one of its three outputs", trials, "step fails with an error naming the s3:// dataset URL; every visible "
          "dataset is complete; rerun after restart succeeds with its checks passing", stopped_at=triggers,
          failed_with_url_in_error=failed_clearly, only_complete_datasets_visible=nothing_partial,
          reruns_succeeded=rerun_ok)


def _causes(err) -> list:
    out = []
    while err is not None and getattr(err, "cause", None) is not None:
        err = err.cause
        out.append(err)
    return out
