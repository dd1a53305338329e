"""Standard-head PRMs exported as Qwen2ForProcessRewardModel, scored by vLLM's pooling runner.

The parity test is what makes serving trustworthy: vLLM has had silent STEP-pooling
bugs, so per-step probabilities from vLLM (given the same token ids) must equal the
transformers computation on real ProcessBench solutions, long ones included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from prm_helpers import CORPUS
from safetensors import safe_open

from prmforge.prm.benchmarks import load_source
from prmforge.prm.export import QWEN2_PRM_ARCH, ExportError, export_qwen2_prm, save_prm
from prmforge.prm.model import EXPORT_DIR, ProcessRewardModel, build_prm, score_steps
from prmforge.prm.tiny import build_tiny_backbone
from prmforge.prm.vllm_score import VLLMPRMScorer, encode_items, score_steps_vllm

pytestmark = pytest.mark.vllm  # starts a vLLM engine: one at a time under `make test` (tests/conftest.py)

torch.set_num_threads(1)
MAX_LEN = 4096


@pytest.fixture(scope="module")
def standard_prm(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random Qwen2 PRM (head_dim 32 for vLLM CPU) with a head that spreads the scores."""
    root = tmp_path_factory.mktemp("qwen2prm")
    base = build_tiny_backbone(root / "base", CORPUS * 5, hidden_size=64, layers=2, heads=2, vocab_size=300,
                               max_positions=MAX_LEN, arch="qwen2")
    model, tok = build_prm(str(base), standard=True, max_length=MAX_LEN, prompt_format="raw", seed=1)
    with torch.no_grad():  # the fresh head's output layer is near zero: make scores vary so parity means something
        model.head[2].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
        model.head[2].bias.copy_(torch.tensor([0.1, -0.1]))
    folder = export_qwen2_prm(model, tok, root / "export")
    return model, tok, folder


def test_export_has_the_layout_vllm_loads(standard_prm) -> None:
    model, tok, folder = standard_prm
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == [QWEN2_PRM_ARCH] and cfg["num_labels"] == 2
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} <= keys
    assert "model.embed_tokens.weight" in keys and all(k.startswith(("model.", "score.")) for k in keys)
    info = json.loads((folder / "prmforge_export.json").read_text())
    assert info["step_token_id"] == model.config.step_token_id
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(info["step_token"]) == info["step_token_id"]


def test_saved_standard_qwen2_prm_carries_the_export(standard_prm, tmp_path: Path) -> None:
    model, tok, _ = standard_prm
    saved = save_prm(model, tok, tmp_path / "prm")
    cfg = json.loads((saved / EXPORT_DIR / "config.json").read_text())
    assert cfg["architectures"] == [QWEN2_PRM_ARCH]
    loaded, _ = ProcessRewardModel.load(saved)  # the project's own loader still reads the folder
    assert loaded.config.head_act == "relu"
    # A standard head on a non-Qwen2 base has no served layout: no export is written.
    llama = build_tiny_backbone(tmp_path / "llama", CORPUS, hidden_size=32)
    other, tok2 = build_prm(str(llama), standard=True)
    assert not (save_prm(other, tok2, tmp_path / "prm2") / EXPORT_DIR).exists()


def test_surprisal_head_is_refused(tmp_path: Path) -> None:
    base = build_tiny_backbone(tmp_path / "b", CORPUS, hidden_size=64, heads=2, arch="qwen2")
    model, tok = build_prm(str(base), surprisal=True, head_hidden=16)
    with pytest.raises(ExportError, match="head_kind: standard"):
        export_qwen2_prm(model, tok, tmp_path / "out")


def test_vllm_step_probabilities_match_transformers_on_processbench(standard_prm, shared_data: Path) -> None:
    model, tok, folder = standard_prm
    samples = []
    for name in ("gsm8k.json", "math.json"):
        samples += load_source(str(shared_data / "processbench" / name)).samples
    samples.sort(key=lambda s: len(s.problem) + sum(map(len, s.steps)))
    picks = [samples[round(i * (len(samples) - 1) / 59)] for i in range(60)]  # shortest to longest
    items = [(s.problem, s.steps) for s in picks]
    cfg = model.config
    lengths = [len(ids) for ids, _ in encode_items(tok, items, cfg.step_token_id, MAX_LEN, cfg.prompt_format)]
    assert max(lengths) > 1500, "the sample must include long solutions"
    ref = score_steps(model, tok, items, batch_size=4)
    with VLLMPRMScorer(str(folder), cfg.step_token_id, max_model_len=MAX_LEN) as scorer:
        got = score_steps_vllm(scorer, tok, items, cfg.step_token_id, MAX_LEN, cfg.prompt_format)
    pairs = [(a, b) for r, g in zip(ref, got, strict=True) for a, b in zip(r, g, strict=True)
             if not math.isnan(a)]
    assert sum(len(r) for r in ref) == sum(len(g) for g in got)
    assert len(pairs) > 300
    ref_vals = torch.tensor([a for a, _ in pairs])
    assert float(ref_vals.std()) > 0.05, "scores must vary for parity to mean anything"
    diff = max(abs(a - b) for a, b in pairs)
    print(f"parity: {len(picks)} solutions, {len(pairs)} steps, max token length {max(lengths)}, "
          f"max |p_hf - p_vllm| = {diff:.2e}")
    assert diff < 1e-3


def test_evaluate_command_reads_both_layouts_alike(standard_prm, shared_data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    from pipelines.cli import main

    model, tok, _ = standard_prm
    saved = save_prm(model, tok, tmp_path / "prm")
    files = [str(shared_data / "processbench" / n) for n in ("gsm8k.json", "math.json")]
    tables = {}
    for name, folder in (("prmforge", saved), ("qwen2-prm", saved / EXPORT_DIR)):
        out = tmp_path / name
        assert main(["evaluate", "--prm", str(folder), "--processbench", *files, "--out", str(out),
                     "--limit", "8"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["format"] == name  # auto-detected
        assert set(metrics["processbench"]) == {"gsm8k", "math", "mean"}
        preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == 16 and all(-1 <= p["pred"] for p in preds)
        tables[name] = pq.read_table(out / "step_scores.parquet").to_pydict()
    a, b = tables["prmforge"]["score"], tables["qwen2-prm"]["score"]
    assert len(a) == len(b) > 16
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
    # Not a PRM folder: one line, exit 2.
    assert main(["evaluate", "--prm", str(tmp_path / "prmforge"), "--processbench", *files,
                 "--out", str(tmp_path / "x")]) == 2
    assert "not a PRM folder in a known layout" in capsys.readouterr().err
