"""Shared fixtures: a real S3 API on loopback (moto server), isolated homes.

The moto server is a real HTTP S3 endpoint on 127.0.0.1; tests reach it
through s3fs exactly as they would reach MinIO or AWS.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from net_helpers import free_port

TESTS_DIR = Path(__file__).resolve().parent
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Retry policies are built when the code location is imported (pipelines/automation.py), before any
# fixture runs: steps keep them but retry without waiting.
os.environ.setdefault("PRMFORGE_RETRY_DELAY_S", "0")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own PRMFORGE_HOME, storage root and MLflow store."""
    home = tmp_path / "prmforge-home"
    home.mkdir()
    monkeypatch.setenv("PRMFORGE_HOME", str(home))
    monkeypatch.delenv("PRMFORGE_STORAGE_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PRMFORGE_PROFILE", "tiny")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # Steps keep their RetryPolicy (pipelines/automation.py) but retry without waiting.
    monkeypatch.setenv("PRMFORGE_RETRY_DELAY_S", "0")
    return home


@pytest.fixture(scope="session", autouse=True)
def _policy_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One policy cache per session (``prmforge.policy.cache``): each policy config trains once.

    Training is deterministic, so a test that finds the tiny policy in the
    cache gets the very weights it would have trained. Subprocesses inherit it.
    Under pytest-xdist each worker has its own base temp dir; the cache sits
    beside them, so the workers share it (``training_lock`` trains each config once).
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        cache = tmp_path_factory.getbasetemp().parent / "policy-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("policy-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRMFORGE_POLICY_CACHE", str(cache))
        yield cache


class S3Server:
    """A moto S3 server on 127.0.0.1 that a test can stop and restart."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._cls = ThreadedMotoServer
        self._server = None

    def start(self) -> None:
        self._server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_root(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the loopback S3 server; returns ``s3://bucket/prefix``.

    Credentials and endpoint are set in the environment, the way a user
    configures MinIO or AWS.
    """
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("PRMFORGE_S3_ENDPOINT_URL", s3_server.endpoint)
    # MLflow's own S3 client reads this one.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server.endpoint)
    bucket = f"prmforge-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/root"


@pytest.fixture
def local_root(tmp_path: Path) -> str:
    root = tmp_path / "storage"
    root.mkdir()
    return root.as_uri()


@pytest.fixture
def shared_data() -> Path:
    """The real GSM8K / ProcessBench files beside the project; skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _xdist_group(item: pytest.Item) -> str:
    """The unit of work ``item`` belongs to: its test file, all ``vllm`` modules, or a whole test folder."""
    if item.get_closest_marker("vllm") is not None:
        return "vllm"
    path = item.path.resolve()
    if not path.is_relative_to(TESTS_DIR):
        return str(path)
    rel = path.relative_to(TESTS_DIR)
    return rel.parts[0] if len(rel.parts) > 1 else rel.as_posix()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests for ``make test``'s ``pytest -n 2 --dist loadgroup``; the marks do nothing in a serial run.

    A test file is one unit, so module fixtures (engines, trained models) are built once. The modules marked
    ``vllm`` are one unit: their engines run one at a time (each binds core 0 with ``cpu_threads_bind:
    auto`` and holds a KV cache and three processes). A folder such as ``tests/reliability`` is one unit, so
    its report (``tests/reliability/conftest.py``) sees the whole suite in one process.
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(_xdist_group(item)))


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, called in the controller
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Stop, rather than run slower, when ``--dist loadgroup`` ignores the groups.

    xdist passes a test's group as a ``@<group>`` suffix of its node id; pytest 9.2 no longer lets it
    (pytest-xdist#1386), and the tests are then spread one by one without any error.
    """
    if node.config.getoption("dist") == "loadgroup" and any("@" not in i for i in ids):
        pytest.exit("pytest-xdist --dist loadgroup ignored the xdist_group marks (pytest-xdist#1386, pytest>=9.2):"
                    " install the dev extra's pytest (`make install`)", returncode=pytest.ExitCode.USAGE_ERROR)
