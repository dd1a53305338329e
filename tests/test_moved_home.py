"""A data home copied to a new path, with the old one deleted, keeps working: MLflow and the champion gate."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from prm_helpers import tiny_backbone

from resources.mlflow import MLflowResource

torch.set_num_threads(1)


def _register(home: Path, prm_dir: Path, value: float):
    import mlflow

    from prmforge.prm.pyfunc import log_pyfunc
    from prmforge.prm.registry import register_and_gate

    res = MLflowResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                         artifact_root=(home / "storage" / "mlflow").as_uri())
    with res.start_run("prm_model"):
        info = log_pyfunc(prm_dir)
        run_id = mlflow.active_run().info.run_id
    return res, register_and_gate(res.client(), "prm", info.model_uri, run_id, "world_f1", value, {}, margin=0.0)


def test_moved_home_starts_a_new_experiment_and_replaces_an_unreachable_champion(tmp_path: Path) -> None:
    import mlflow

    from prmforge.prm.model import build_prm

    model, tok = build_prm(tiny_backbone(tmp_path / "bb"), max_length=128)
    prm_dir = model.save(tmp_path / "prm", tok)
    old, new = tmp_path / "old-home", tmp_path / "new-home"
    old.mkdir()
    _, first = _register(old, prm_dir, 0.5)
    assert first.promoted and first.version == "1"

    shutil.copytree(old, new)
    shutil.rmtree(old)

    res, second = _register(new, prm_dir, 0.5)  # equal metric: only an unreachable champion lets it through
    try:
        assert second.promoted and second.version == "2", second.reason
        assert "artifacts are unreachable" in second.reason
        client = res.client()
        exps = {e.name: e for e in client.search_experiments()}
        assert Path(exps["prmforge"].artifact_location.removeprefix("file://")).is_relative_to(new)
        assert any(name.startswith("prmforge (before ") for name in exps)  # the history is kept
        champion = mlflow.pyfunc.load_model("models:/prm@champion")
        import pandas as pd

        scores = champion.predict(pd.DataFrame({"problem": ["1+1?"], "steps": [["1+1=2", "The answer is 2."]]}))
        assert len(scores["step_scores"][0]) == 2
        assert not old.exists()
    finally:
        mlflow.set_tracking_uri("")


def test_a_reachable_champion_still_gates(tmp_path: Path) -> None:
    from prmforge.prm.model import build_prm

    model, tok = build_prm(tiny_backbone(tmp_path / "bb"), max_length=128)
    prm_dir = model.save(tmp_path / "prm", tok)
    home = tmp_path / "home"
    home.mkdir()
    _register(home, prm_dir, 0.5)
    _, again = _register(home, prm_dir, 0.5)
    assert not again.promoted and "does not beat champion" in again.reason


@pytest.fixture(autouse=True)
def _reset_tracking():
    yield
    import mlflow

    mlflow.set_tracking_uri("")


def test_a_finished_home_copied_elsewhere_registers_a_new_champion(tmp_path: Path, monkeypatch) -> None:
    """The whole tiny pipeline in one home; the home is copied, the original deleted, and the PRM stages
    run again from the copy: they find their inputs under the new root and a new champion is registered."""
    import os
    import subprocess
    import sys

    import mlflow

    from pipelines import cli

    old, new = tmp_path / "old-home", tmp_path / "new-home"
    registry = tmp_path / "datasets.yaml"
    registry.write_text("datasets:\n  world-demo: {source: world, adapter: world}\n")
    monkeypatch.setenv("PRMFORGE_REGISTRY", str(registry))
    monkeypatch.setenv("PRMFORGE_MAX_RETRIES", "0")

    def use(home: Path) -> None:
        monkeypatch.setenv("PRMFORGE_HOME", str(home))
        monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))

    use(old)
    assert cli.main(["run", "--profile", "tiny", "--partitions", "world-demo"]) == 0
    shutil.copytree(old, new)
    shutil.rmtree(old)

    use(new)  # a new shell on the new home: a new process
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--profile", "tiny", "--partitions",
                          "world-demo", "--select", "key:prm_model+"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=1200,
                         # mlflow.set_tracking_uri in this process exported the old store; a new shell has none
                         env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "became champion" in out.stdout, out.stdout[-2000:]
    uri = f"sqlite:///{new / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("prmforge-prm", "champion")
    assert str(champion.version) == "2", champion
    assert "artifacts are unreachable" in out.stdout
    assert not old.exists()
    # Nothing the second run wrote names the old home.
    for root, _, files in os.walk(new / "storage" / "models"):
        for name in files:
            if name.endswith(".json"):
                assert str(old) not in (Path(root) / name).read_text(encoding="utf-8"), name
