"""Storage: atomic writes (even under kill -9), schema enforcement, names, S3 round trip."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from prmforge.names import InvalidNameError, validate_name
from prmforge.schemas import SEED_PROBLEMS
from prmforge.storage import SchemaMismatchError, Storage, StorageError, enforce_schema

REPO = Path(__file__).resolve().parents[1]


def _seed_table(n: int, tag: str = "v") -> pa.Table:
    return pa.table(
        {
            "problem_id": [f"{tag}{i:08d}" for i in range(n)],
            "dataset": ["d"] * n,
            "problem": [f"problem {tag} {i}" for i in range(n)],
            "answer": [str(i) for i in range(n)],
            "split": ["train"] * n,
            "source_row": list(range(n)),
            "meta": ["{}"] * n,
        }
    )


WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {repo!r})
    import pyarrow as pa
    from prmforge.storage import Storage
    mode, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    storage = Storage(root)
    if mode == "stall":
        real_fsync = os.fsync
        def slow_fsync(fd):
            real_fsync(fd)
            print("in-fsync", flush=True)   # temp file written, not yet renamed
            time.sleep(60)
        os.fsync = slow_fsync
    i = 0
    while True:
        i += 1
        tag = f"w{{i:04d}}-"
        table = pa.table({{"problem_id": [f"{{tag}}{{k:08d}}" for k in range(n)], "dataset": ["d"] * n,
                          "problem": [f"problem {{tag}} {{k}}" for k in range(n)], "answer": [str(k) for k in range(n)],
                          "split": ["train"] * n, "source_row": list(range(n)), "meta": ["{{}}"] * n}})
        print(f"start {{i}}", flush=True)
        storage.write_dataset("seed_problems", table, "p")
        print(f"done {{i}}", flush=True)
    """
).format(repo=str(REPO))


def _check_complete(path: str, n: int) -> str:
    """Read the file through one open descriptor; it must be one whole version (n rows, one tag).

    One descriptor, as ``Storage.read_parquet`` reads: ``pq.read_table(path)`` stats the
    path and opens it separately, so a rename between the two pairs the old file's size
    with the new file's bytes ("Couldn't deserialize thrift"), a race in that reader,
    not a partial file on disk.
    """
    with open(path, "rb") as f:
        t = pq.read_table(io.BytesIO(f.read()))
    assert t.num_rows == n
    tags = {pid.split("-")[0] for pid in t.column("problem_id").to_pylist()}
    assert len(tags) == 1, tags
    return tags.pop()


def _spawn(mode: str, root: str, n: int, tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), mode, root, str(n)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_kill_9_during_write_leaves_the_old_complete_file(local_root: str, tmp_path: Path) -> None:
    storage = Storage(local_root)
    n = 20_000
    storage.write_dataset("seed_problems", _seed_table(n, "orig-"), "p")
    target = storage.path("datasets", "seed_problems", "p", "data.parquet")
    proc = _spawn("stall", local_root, n, tmp_path)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "in-fsync":
                break
        assert lines[-1] == "in-fsync", lines
        leftovers = [p for p in os.listdir(os.path.dirname(target)) if p.startswith(".tmp-")]
        assert leftovers, "the writer should be mid-write: its temp file exists, not yet renamed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _check_complete(target, n) == "orig"
    # the documented readers skip the leftover temp file ('.'-prefixed): the dataset reads whole
    folder = os.path.dirname(target)
    assert pads.dataset(folder, format="parquet").to_table().num_rows == n
    assert storage.read_dataset("seed_problems", "p").num_rows == n


def test_reader_never_sees_a_partial_file_while_writer_is_killed(local_root: str, tmp_path: Path) -> None:
    storage = Storage(local_root)
    n = 30_000
    storage.write_dataset("seed_problems", _seed_table(n, "orig-"), "p")
    target = storage.path("datasets", "seed_problems", "p", "data.parquet")
    seen: set[str] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(_check_complete(target, n))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                return

    proc = _spawn("loop", local_root, n, tmp_path)
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert proc.stdout is not None
        starts = 0
        for line in proc.stdout:
            if line.startswith("start"):
                starts += 1
                if starts >= 6:
                    time.sleep(0.01)  # somewhere inside the 6th write
                    break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=30)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert not errors, errors[0]
    assert len(seen) >= 2  # the reader saw several complete versions, never a partial one
    _check_complete(target, n)


def test_schema_enforced_at_write(local_root: str) -> None:
    storage = Storage(local_root)
    good = _seed_table(3)
    with pytest.raises(SchemaMismatchError, match="missing columns \\['meta'\\]"):
        storage.write_dataset("seed_problems", good.drop_columns(["meta"]), "p")
    with pytest.raises(SchemaMismatchError, match="unexpected columns \\['extra'\\]"):
        storage.write_dataset("seed_problems", good.append_column("extra", pa.array([1, 2, 3])), "p")
    bad_type = good.set_column(5, "source_row", pa.array(["a", "b", "c"]))
    with pytest.raises(SchemaMismatchError, match="source_row"):
        storage.write_dataset("seed_problems", bad_type, "p")
    nulls = good.set_column(3, "answer", pa.array(["1", None, "3"]))
    with pytest.raises(SchemaMismatchError, match="nulls"):
        storage.write_dataset("seed_problems", nulls, "p")
    assert not storage.dataset_exists("seed_problems", "p")  # nothing written by refused tables
    # a safe cast (int32 -> int64) and column reordering are fine
    narrow = good.set_column(5, "source_row", pa.array([0, 1, 2], pa.int32()))
    reordered = narrow.select(list(reversed(narrow.column_names)))
    storage.write_dataset("seed_problems", reordered, "p")
    back = storage.read_dataset("seed_problems", "p")
    assert back.schema.equals(SEED_PROBLEMS) and back.column("source_row").to_pylist() == [0, 1, 2]
    assert enforce_schema(good, SEED_PROBLEMS, "seed_problems").equals(good.cast(SEED_PROBLEMS))


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "a\\b", "", "-x", "A", "x" * 65, "a b", "a\x00", "é", 5])
def test_names_that_could_escape_the_root_are_refused(local_root: str, bad: object) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(bad)
    with pytest.raises(InvalidNameError):
        Storage(local_root).dataset_url("seed_problems", bad)  # type: ignore[arg-type]


def test_good_names_pass() -> None:
    for good in ["gsm8k", "world-demo", "math_500.v2", "a"]:
        assert validate_name(good) == good


def test_unsupported_root() -> None:
    with pytest.raises(StorageError, match="unsupported"):
        Storage("gs://bucket/x")


def test_s3_round_trip_through_s3fs_and_plain_pyarrow(s3_root: str, s3_server, tmp_path: Path) -> None:
    import s3fs
    from pyarrow import fs as pafs

    storage = Storage(s3_root)
    table = _seed_table(50)
    url = storage.write_dataset("seed_problems", table, "gsm8k")
    assert url == f"{s3_root}/datasets/seed_problems/gsm8k/data.parquet"
    storage.write_dataset("seed_problems", _seed_table(5, "w"), "world-demo")
    assert storage.list_partitions("seed_problems") == ["gsm8k", "world-demo"]
    assert storage.read_dataset("seed_problems", "gsm8k").equals(table.cast(SEED_PROBLEMS))

    # a user without prmforge: s3fs + pyarrow ...
    s3 = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server.endpoint)
    with s3.open(url.removeprefix("s3://"), "rb") as fh:
        assert pq.read_table(fh).num_rows == 50
    # ... or pyarrow's own S3 client over the whole dataset folder
    native = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                               endpoint_override=s3_server.endpoint.removeprefix("http://"), scheme="http")
    whole = pads.dataset(f"{s3_root.removeprefix('s3://')}/datasets/seed_problems", filesystem=native,
                         format="parquet", partitioning=["dataset_key"]).to_table()
    assert whole.num_rows == 55 and set(whole.column("dataset_key").to_pylist()) == {"gsm8k", "world-demo"}

    # shards and model folders
    storage.write_shard("labels", "gsm8k", "run1", 0, table.slice(0, 10))
    storage.write_shard("labels", "gsm8k", "run1", 2, table.slice(10, 10))
    assert storage.finished_shards("labels", "gsm8k", "run1") == {0, 2}
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "w.txt").write_text("weights")
    assert not storage.dir_complete("models", "m", "1")
    storage.put_dir(model, "models", "m", "1")
    assert storage.dir_complete("models", "m", "1")
    out = storage.get_dir(tmp_path / "back", "models", "m", "1")
    assert (out / "sub" / "w.txt").read_text() == "weights"
    with pytest.raises(StorageError, match="incomplete"):
        storage.get_dir(tmp_path / "nope", "models", "m", "2")


def test_s3_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("PRMFORGE_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage = Storage("s3://nobucket/root", storage_options={"config_kwargs": {"connect_timeout": 1,
                                                                                "retries": {"max_attempts": 1}}})
    with pytest.raises(StorageError, match="s3://nobucket/root/datasets/seed_problems/p/data.parquet"):
        storage.write_dataset("seed_problems", _seed_table(2), "p")
