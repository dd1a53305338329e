"""Real MLflow (sqlite + local artifacts): pyfunc logging, lineage, and the champion gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prm_helpers import tiny_backbone

torch.set_num_threads(1)


@pytest.fixture
def logged_prm(tmp_path: Path):
    import mlflow

    from prmforge.prm.model import build_prm
    from prmforge.prm.pyfunc import log_pyfunc

    model, tok = build_prm(tiny_backbone(tmp_path / "bb"), max_length=128)
    prm_dir = model.save(tmp_path / "prm", tok)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        info = log_pyfunc(prm_dir)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    yield client, info.model_uri, run.info.run_id, uri
    mlflow.set_tracking_uri("")


def test_gate(logged_prm) -> None:
    from prmforge.prm.registry import CHAMPION, register_and_gate

    client, model_uri, run_id, _ = logged_prm
    lineage = {"data.labels": "abc123", "git_commit": "deadbeef", "config": json.dumps({"lr": 1e-3})}
    d1 = register_and_gate(client, "prm", model_uri, run_id, "world_f1", 0.50, lineage, margin=0.02)
    assert d1.promoted and d1.version == "1" and set(d1.aliases) == {"champion", "challenger"}
    tags = client.get_model_version("prm", "1").tags
    assert tags["data.labels"] == "abc123" and tags["git_commit"] == "deadbeef" and tags["prmforge.complete"] == "true"

    # Worse, and better-but-within-margin, challengers are refused.
    d2 = register_and_gate(client, "prm", model_uri, run_id, "world_f1", 0.40, lineage, margin=0.02)
    assert not d2.promoted and d2.aliases == ["challenger"] and d2.champion_version == "1"
    d3 = register_and_gate(client, "prm", model_uri, run_id, "world_f1", 0.51, lineage, margin=0.02)
    assert not d3.promoted
    assert str(client.get_model_version_by_alias("prm", CHAMPION).version) == "1"

    # Better by more than the margin: promoted.
    d4 = register_and_gate(client, "prm", model_uri, run_id, "world_f1", 0.60, lineage, margin=0.02)
    assert d4.promoted and str(client.get_model_version_by_alias("prm", CHAMPION).version) == "4"
    assert str(client.get_model_version_by_alias("prm", "challenger").version) == "4"


@pytest.mark.parametrize("corruption", ["unparsable", "missing"])
def test_failed_champion_read_does_not_promote(logged_prm, corruption: str) -> None:
    from prmforge.prm.registry import CHAMPION, register_and_gate

    client, model_uri, run_id, _ = logged_prm
    assert register_and_gate(client, "prm", model_uri, run_id, "world_f1", 0.5, {}).promoted
    if corruption == "unparsable":
        client.set_model_version_tag("prm", "1", "gate.world_f1", "not-a-number")
    else:
        client.delete_model_version_tag("prm", "1", "gate.world_f1")
    d = register_and_gate(client, "prm", model_uri, run_id, "world_f1", 0.99, {})
    assert not d.promoted and "could not be read" in d.reason
    assert str(client.get_model_version_by_alias("prm", CHAMPION).version) == "1"


def test_champion_scores_steps_in_fresh_process(logged_prm, tmp_path: Path) -> None:
    from prmforge.prm.registry import register_and_gate

    client, model_uri, run_id, uri = logged_prm
    register_and_gate(client, "prm-fresh", model_uri, run_id, "world_f1", 0.5, {})
    script = (
        "import json, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({uri!r}); mlflow.set_registry_uri({uri!r})\n"
        "m = mlflow.pyfunc.load_model('models:/prm-fresh@champion')\n"
        "df = pd.DataFrame({'problem': ['Tom has 3 apples.', 'x'], 'steps': [['3 + 4 = 7', 'The answer is 7.'],"
        " ['1 + 1 = 2']]})\n"
        "out = m.predict(df)\n"
        "print(json.dumps([list(map(float, s)) for s in out['step_scores']]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [len(s) for s in scores] == [2, 1]
    assert all(0.0 < x < 1.0 for s in scores for x in s)


def test_half_registered_version_is_removed_and_never_champion(logged_prm) -> None:
    from mlflow.exceptions import MlflowException

    from prmforge.prm.registry import register_and_gate

    client, model_uri, run_id, _ = logged_prm
    with pytest.raises(MlflowException):  # an invalid tag key fails half-way through tagging
        register_and_gate(client, "prm-half", model_uri, run_id, "world_f1", 0.9, {"bad\nkey": "x"})
    assert client.search_model_versions("name='prm-half'") == []
    assert "champion" not in (client.get_registered_model("prm-half").aliases or {})
    # Version 1 had been created (then deleted): the next registration is version 2 and becomes champion.
    d = register_and_gate(client, "prm-half", model_uri, run_id, "world_f1", 0.9, {})
    assert d.version == "2" and d.promoted
