"""The production configuration where this machine allows: real PostgreSQL, a real MLflow server.

A throwaway Postgres cluster (Debian's binaries under /usr/lib/postgresql/*/bin)
is started on a free loopback port, as the ``postgres`` user when the tests
run as root. On it:

* a Dagster instance configured by ``infra/dagster.yaml`` (dagster-postgres),
  running a real ingestion run;
* an ``mlflow server`` process with a Postgres backend store and S3 (moto)
  artifacts on 127.0.0.1, used through ``MLflowResource``.

Skips only if the Postgres binaries are absent (``.ci/run`` installs them).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from net_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "pg-test-secret"
USER = "prmforge"


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class Postgres:
    port: int
    user: str = USER
    password: str = PASSWORD

    def url(self, db: str) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname=db)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="prmforge-pg-"))
    data, sock, pwfile = base / "data", base / "sock", base / "pw"
    sock.mkdir()
    pwfile.write_text(PASSWORD + "\n")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        pw = pwd.getpwnam("postgres")
        for p in (base, sock, pwfile):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=180)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"),
                    "-w", "-t", "120", "start"], check=True, capture_output=True, timeout=180)
    pg = Postgres(port)
    try:
        conn = pg.connect("postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE dagster")
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield pg
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_dagster_instance_on_postgres_runs_ingestion(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from assets.partitions import DATASETS_PARTITIONS_NAME
    from pipelines.automation import GPU_POOL

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "infra" / "dagster.yaml", home / "dagster.yaml")
    for key, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(postgres.port),
                       "DAGSTER_PG_DB": "dagster", "DAGSTER_PG_USER": USER, "DAGSTER_PG_PASSWORD": PASSWORD,
                       "DAGSTER_HOME": str(home)}.items():
        monkeypatch.setenv(key, value)
    registry = tmp_path / "datasets.yaml"
    registry.write_text("datasets:\n  gsm8k-sample: {source: 'bundled:gsm8k_sample.jsonl', format: jsonl, "
                        "adapter: gsm8k}\n")
    monkeypatch.setenv("PRMFORGE_REGISTRY", str(registry))

    # Entered, as the CLI does: loading definitions reads the *current* defs-state storage, and an earlier
    # test's direct schedule invocation can leave a disposed instance's storage current in this thread.
    with dg.DagsterInstance.get() as instance:
        # infra/dagster.yaml, loaded and validated by Dagster itself: its storage, queue and monitoring.
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.global_op_concurrency_default_limit == 1  # the gpu pool: one GPU step at a time
        # A killed run's gpu slot is freed by the monitoring daemon (tests/test_dead_run_slots.py).
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.event_log_storage.supports_global_concurrency_limits
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, 1)
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == 1

        from pipelines.definitions import build_defs

        defs = build_defs()
        instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, ["gsm8k-sample"])
        result = defs.resolve_job_def("seed_job").execute_in_process(instance=instance,
                                                                      partition_key="gsm8k-sample")
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("seed_problems"))
        assert event is not None and event.tags.get("dagster/data_version")

    # The rows really are in Postgres, not in a local file.
    with postgres.connect("dagster") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = %s",
                    (DATASETS_PARTITIONS_NAME,))
        assert [r[0] for r in cur.fetchall()] == ["gsm8k-sample"]
    assert not list(home.glob("**/*.db")), "a sqlite store was created instead of Postgres"


@pytest.fixture
def mlflow_server(postgres: Postgres, tmp_path: Path, s3_root: str) -> Iterator[str]:
    port = free_port()
    artifacts = f"{s3_root}/mlartifacts"
    log = open(tmp_path / "mlflow-server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", postgres.url("mlflow"),
         "--artifacts-destination", artifacts],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ), start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError("mlflow server did not start:\n"
                                   + (tmp_path / "mlflow-server.log").read_text()[-3000:])
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_mlflow_server_with_postgres_backend_through_the_resource(
    postgres: Postgres, mlflow_server: str, s3_root: str, tmp_path: Path
) -> None:
    from resources.mlflow import MLflowResource

    resource = MLflowResource(tracking_uri=mlflow_server, artifact_root=f"{s3_root}/mlflow",
                              experiment="prod-check")
    artifact = tmp_path / "summary.txt"
    artifact.write_text("f1=0.5\n")
    import mlflow

    with resource.start_run("prod-config", tags={"stage": "test"}) as run:
        resource.log_params({"lr": 0.001, "api_key": "should-not-be-logged"})
        mlflow.log_metric("f1", 0.5)
        mlflow.log_artifact(str(artifact))
    client = resource.client()
    stored = client.get_run(run.info.run_id)
    assert stored.data.metrics["f1"] == 0.5 and stored.data.params["lr"] == "0.001"
    assert "should-not-be-logged" not in stored.data.params.values()
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["summary.txt"]
    client.create_registered_model("prm-prod-check")
    version = client.create_model_version("prm-prod-check", source=f"runs:/{run.info.run_id}/summary.txt",
                                          run_id=run.info.run_id)
    assert version.version == "1"

    # Runs and the registry live in Postgres; artifacts in the S3 bucket.
    with postgres.connect("mlflow") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM model_versions WHERE name = %s", ("prm-prod-check",))
        assert cur.fetchone()[0] == 1
    from prmforge.storage import Storage

    store = Storage(s3_root)
    assert any(p.endswith("summary.txt") for p in store.fs.find(store.path("mlflow")))
