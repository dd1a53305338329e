"""MLflow outage during training logging and during registration.

The tracking server is MLflow's own server app on 127.0.0.1 (sqlite store),
stopped at chosen points and started again on the same port. MLflow's HTTP
retries are bounded through its documented environment variables so a
failing step fails within seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from dagster import DagsterEventType, DagsterInstance, SourceAsset, materialize
from rel_helpers import MLflowTrackingServer, free_port

from prmforge.storage import Storage

torch.set_num_threads(1)

RETRIES = 2


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowTrackingServer]:
    server = MLflowTrackingServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(RETRIES))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _failure_text(res) -> str:
    failures = [e for e in res.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failures, "expected a step failure"
    err = failures[0].step_failure_data.error
    text = err.message
    while getattr(err, "cause", None) is not None:
        err = err.cause
        text += " | " + err.message
    return text


def _prm_setup(tmp_path: Path, root: str) -> tuple[list, dict]:
    from prm_helpers import tiny_backbone, world_rows

    from assets.partitions import dataset_partitions
    from assets.prm import prm_model
    from prmforge.labeling.consensus import CONSENSUS_SCHEMA

    base = tiny_backbone(tmp_path / "bb", hidden=32, layers=2)
    rows, _ = world_rows(48, seed=2, dataset="world-a")
    Storage(root).write_dataset("consensus_labels", pa.Table.from_pylist(rows, schema=CONSENSUS_SCHEMA), "world-a")
    assets = [SourceAsset("consensus_labels", partitions_def=dataset_partitions), SourceAsset("policy_model"),
              prm_model]
    run_config = {"ops": {"prm_model": {"config": {"base_model": base, "epochs": 3.0}}}}
    return assets, run_config


def _materialize_prm(assets: list, run_config: dict, root: str, tracking_uri: str, tmp_path: Path):
    from assets.prm import prm_model
    from resources import build_resources
    from resources.mlflow import MLflowResource
    from resources.storage import StorageResource

    resources = build_resources(storage=StorageResource(root=root),
                                mlflow=MLflowResource(tracking_uri=tracking_uri,
                                                      artifact_root=(tmp_path / "artifacts").as_uri()))
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("datasets", ["world-a"])
        res = materialize(assets, selection=[prm_model], instance=instance, resources=resources,
                          run_config=run_config, raise_on_error=False)
        meta = {}
        if res.success:
            mat = res.asset_materializations_for_node("prm_model")[0]
            meta = {k: v.value for k, v in mat.metadata.items()}
    return res, meta


def test_tracking_server_dies_during_training(tracking: MLflowTrackingServer, local_root: str, tmp_path: Path,
                                              fault) -> None:
    assets, run_config = _prm_setup(tmp_path, local_root)
    ckpt = Path(Storage(local_root).path("checkpoints", "prm"))
    stopped_at: dict[str, int] = {}
    finished = threading.Event()

    def stop_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not finished.is_set():
            done = [int(p.parent.name[5:]) for p in ckpt.glob("*/step-*/_COMPLETE")]
            if done:
                tracking.stop()
                stopped_at["step"] = max(done)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=stop_after_first_checkpoint)
    watcher.start()
    t0 = time.monotonic()
    try:
        res, _ = _materialize_prm(assets, run_config, local_root, tracking.url, tmp_path)
    finally:
        finished.set()
    failed_after_s = time.monotonic() - t0
    watcher.join()
    assert "step" in stopped_at
    assert not res.success, "training finished before the outage: not an outage during training"
    text = _failure_text(res)
    assert tracking.url.split("//")[1] in text, text[:1500]  # names the tracking server

    tracking.start()
    res2, meta = _materialize_prm(assets, run_config, local_root, tracking.url, tmp_path)
    assert res2.success, _failure_text(res2)[:2000]
    assert meta["resumed_from_step"] >= stopped_at["step"] > 0  # resumed from its checkpoint
    import mlflow

    client = mlflow.MlflowClient(tracking.url)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "loss")) > 0
    fault("MLflow tracking server stopped during PRM training logging (real `prm_model` materialisation), "
          "after the first checkpoint", 1, "step fails naming the tracking URL after MLflow's retries; rerun "
          "after restart succeeds and resumes from the checkpoint", http_retries=RETRIES,
          server_stopped_after_checkpoint_step=stopped_at["step"], failed_after_s=round(failed_after_s, 1),
          rerun_resumed_from_step=meta["resumed_from_step"], rerun_train_steps=meta["train_steps"])


def test_tracking_server_unreachable_at_training_start(local_root: str, tmp_path: Path, fault) -> None:
    assets, run_config = _prm_setup(tmp_path, local_root)
    closed = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    res, _ = _materialize_prm(assets, run_config, local_root, closed, tmp_path)
    elapsed = time.monotonic() - t0
    assert not res.success
    text = _failure_text(res)
    assert closed in text and "unreachable" in text, text[:1500]
    assert not Path(Storage(local_root).path("models", "prm")).exists()  # nothing trained untracked
    fault("MLflow tracking URI pointing at a closed 127.0.0.1 port (`prm_model`)", 1,
          "step fails before training with an error naming the tracking URL; no model written",
          http_retries=RETRIES, failed_after_s=round(elapsed, 1))


class StopServerAfter:
    """The real MlflowClient; after the n-th call of ``method`` returns, the tracking server stops."""

    def __init__(self, client, method: str, nth: int, server: MLflowTrackingServer) -> None:
        self._client, self._method, self._nth, self._server = client, method, nth, server
        self.calls = 0

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if name != self._method:
            return attr

        def wrapped(*args, **kwargs):
            out = attr(*args, **kwargs)
            self.calls += 1
            if self.calls == self._nth:
                self._server.stop()
            return out

        return wrapped


def _model_source(client, tmp_path: Path) -> tuple[str, str]:
    exp = client.create_experiment(f"reg-{time.time_ns()}")
    run = client.create_run(exp)
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
    client.set_terminated(run.info.run_id)
    return f"{run.info.artifact_uri}/model", run.info.run_id


KILL_POINTS = [("create_model_version", 1), ("set_model_version_tag", 1), ("set_model_version_tag", 3),
               ("set_registered_model_alias", 1), ("get_registered_model", 2)]


def test_tracking_server_dies_during_registration(tracking: MLflowTrackingServer, tmp_path: Path, fault) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from prmforge.prm.registry import CHAMPION, COMPLETE_TAG, register_and_gate

    client = mlflow.MlflowClient(tracking.url, tracking.url)
    source, run_id = _model_source(client, tmp_path)
    name = f"prm-outage-{time.time_ns()}"
    lineage = {"git_commit": "test", "config": "{}", "data_version.training_labels": "abc"}
    first = register_and_gate(client, name, source, run_id, "world_f1", 0.5, lineage)
    assert first.promoted and first.version == "1"
    failed = 0
    for i, (method, nth) in enumerate(KILL_POINTS):
        proxy = StopServerAfter(mlflow.MlflowClient(tracking.url, tracking.url), method, nth, tracking)
        with pytest.raises(MlflowException) as err:
            register_and_gate(proxy, name, source, run_id, "world_f1", 0.9 + i / 100, lineage)
        assert proxy.calls >= nth and not tracking.running
        assert tracking.url in str(err.value)
        failed += 1
        tracking.start()
    versions = client.search_model_versions(f"name='{name}'")
    half = [v for v in versions if (v.tags or {}).get(COMPLETE_TAG) != "true"]
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert str(champion.version) == "1" and champion.tags.get(COMPLETE_TAG) == "true"
    assert all(CHAMPION not in (v.aliases or []) for v in half)
    # Closed port from the start: fails clearly, registers nothing.
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MlflowException) as closed_err:
        register_and_gate(mlflow.MlflowClient(closed, closed), name, source, run_id, "world_f1", 0.99, lineage)
    assert closed in str(closed_err.value)
    # The server is back: a rerun registers a complete version and the gate promotes it.
    again = register_and_gate(client, name, source, run_id, "world_f1", 0.99, lineage)
    assert again.promoted
    champ = client.get_model_version_by_alias(name, CHAMPION)
    assert str(champ.version) == again.version and champ.tags.get(COMPLETE_TAG) == "true"
    fault("MLflow tracking/registry server stopped inside `register_and_gate` (after create_model_version; "
          "after the 1st / 3rd version tag; after the challenger alias; while reading the champion) + a closed "
          "port", len(KILL_POINTS) + 1, "registration fails with an error naming the server URL; no version "
          "without `prmforge.complete=true` carries `champion`; champion stays v1; rerun after restart "
          "registers and promotes a complete version", registrations_failed=failed + 1,
          versions_left_half_registered=len(half), champion_after_outages=str(champion.version),
          champion_after_rerun=again.version)
