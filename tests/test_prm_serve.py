"""The champion from the MLflow registry: evaluated by ``prmforge evaluate --prm models:/...@champion``
(the run tied to the version) and served over HTTP by vLLM (``prmforge serve``), with its pyfunc still working.

A tiny random standard-head PRM on a Qwen2 base is registered for real (MLflow on sqlite),
then resolved from the registry exactly as a user would; the server's ``/pooling`` step
scores must equal the transformers computation of the same PRM.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import httpx
import pytest
import torch
from net_helpers import free_port
from prm_helpers import CORPUS

from pipelines.cli import main
from prmforge.engines.vllm_server import VLLMServer
from prmforge.prm.export import save_prm
from prmforge.prm.model import build_prm, score_steps
from prmforge.prm.tiny import build_tiny_backbone

pytestmark = pytest.mark.vllm  # starts a vLLM engine: one at a time under `make test` (tests/conftest.py)

torch.set_num_threads(1)
CHAMPION = "models:/prmforge-prm@champion"


def _register_champion(tmp_path: Path):
    """Train nothing: a tiny random standard PRM, logged as the pyfunc and registered as champion."""
    import mlflow

    from prmforge.env import default_tracking_uri
    from prmforge.prm.pyfunc import log_pyfunc
    from prmforge.prm.registry import register_and_gate

    base = build_tiny_backbone(tmp_path / "base", CORPUS * 5, hidden_size=64, layers=2, heads=2, vocab_size=300,
                               max_positions=2048, arch="qwen2")
    model, tok = build_prm(str(base), standard=True, max_length=2048, prompt_format="raw", seed=1)
    with torch.no_grad():
        model.head[2].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    folder = save_prm(model, tok, tmp_path / "prm-0a1b2c3d")  # named by run key, as prm_model stores it
    mlflow.set_tracking_uri(default_tracking_uri())
    exp_id = mlflow.MlflowClient(default_tracking_uri()).create_experiment("prm-serve-test")  # this test's own store
    with mlflow.start_run(experiment_id=exp_id):
        info = log_pyfunc(folder)
    client = mlflow.MlflowClient(default_tracking_uri())
    decision = register_and_gate(client, "prmforge-prm", info.model_uri, info.run_id, "world_f1", 0.5, {})
    assert decision.promoted
    return model, tok, decision.version


def test_evaluate_the_champion_from_the_registry(tmp_path: Path, shared_data: Path) -> None:
    import mlflow

    from prmforge.env import default_tracking_uri

    _, _, version = _register_champion(tmp_path)
    files = [str(shared_data / "processbench" / n) for n in ("gsm8k.json", "math.json")]
    out = tmp_path / "eval"
    assert main(["evaluate", "--prm", CHAMPION, "--processbench", *files, "--out", str(out), "--limit", "5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["format"] == "prmforge" and metrics["model_version"] == version
    client = mlflow.MlflowClient(default_tracking_uri())
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.data.tags["model_name"] == "prmforge-prm" and run.data.tags["model_version"] == version
    assert run.data.metrics["mean_f1"] == pytest.approx(metrics["processbench"]["mean"]["f1"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} >= {
        "evaluation/metrics.json", "evaluation/predictions.jsonl", "evaluation/step_scores.parquet"}
    tags = client.get_model_version("prmforge-prm", version).tags
    assert tags["evaluation.gsm8k_math.run_id"] == run.info.run_id
    # An unknown alias is one line, exit 2.
    assert main(["evaluate", "--prm", "models:/prmforge-prm@nope", "--processbench", *files,
                 "--out", str(tmp_path / "x")]) == 2


@pytest.mark.slow
def test_serve_the_champion_over_http(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow
    import pandas as pd

    from prmforge.prm.serve import servable_folder, step_scores_from_response, step_scores_request

    model, tok, _ = _register_champion(tmp_path)
    port = free_port()
    assert main(["serve", "--print-command", "--port", str(port), "--kv-cache-gib", "0.5"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--runner") + 1] == "pooling"
    folder = servable_folder(CHAMPION)
    problem = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    steps = ["Tom starts with 3 apples.", "3 + 4 = 7", "He has 7 apples.", "The answer is 7."]
    expected = score_steps(model, tok, [(problem, steps)])[0]
    with VLLMServer(cmd, port, tmp_path / "server.log") as srv:
        r = httpx.post(f"http://127.0.0.1:{srv.port}/pooling", json=step_scores_request(folder, problem, steps),
                       timeout=120)
        assert r.status_code == 200, r.text
        got = step_scores_from_response(r.json())
    assert len(got) == len(steps)
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-3
    assert max(expected) - min(expected) > 0.01  # the comparison means something
    # The MLflow pyfunc of the same version keeps working.
    served = mlflow.pyfunc.load_model(CHAMPION).predict(pd.DataFrame({"problem": [problem], "steps": [steps]}))
    assert list(served["step_scores"][0]) == pytest.approx(expected, abs=1e-6)
