"""``prmforge evaluate`` on tiny random PRMs of every layout, built here (no download).

The layouts are the ones the PRMs people cite come in: this project's folder,
``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM), a causal LM read at a step tag
(Math-Shepherd) and a TRL token classifier. Each is scored on real ProcessBench
solutions through the command; the vLLM test scores the three external layouts
through vLLM's pooling runner and requires the transformers step scores, since
vLLM reads two of them through conversions (LM-head rows as a classifier, ALL
pooling) that could silently read the wrong numbers, and the Qwen2 PRM through
its chat template.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from prm_helpers import CORPUS, tiny_math_shepherd, tiny_qwen_math_prm, tiny_token_classifier

from pipelines.cli import main
from prmforge.prm.export import save_prm
from prmforge.prm.layouts import detect_format, open_layout
from prmforge.prm.model import EXPORT_DIR, build_prm
from prmforge.prm.tiny import build_tiny_backbone

pytestmark = pytest.mark.vllm  # starts a vLLM engine: one at a time under `make test` (tests/conftest.py)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny PRM per layout: prmforge (with its qwen2_prm/ export, tested in test_prm_export.py), a
    Qwen2.5-Math-PRM look-alike (chat template, ``<extra_0>``), math-shepherd, token-classify."""
    root = tmp_path_factory.mktemp("layouts")
    base = build_tiny_backbone(root / "base", CORPUS * 5, hidden_size=64, layers=2, heads=2, vocab_size=300,
                               max_positions=4096, arch="qwen2")
    model, tok = build_prm(str(base), standard=True, max_length=4096, prompt_format="raw", seed=1)
    with torch.no_grad():
        model.head[2].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    own = save_prm(model, tok, root / "prm")
    assert (own / EXPORT_DIR).is_dir()
    return {"prmforge": own, "qwen2-prm": tiny_qwen_math_prm(root / "qwen"),
            "math-shepherd": tiny_math_shepherd(root / "shepherd"), "token-classify": tiny_token_classifier(root / "trl")}


def _run(prm: Path | str, files: list[str], out: Path, *extra: str) -> tuple[dict, dict]:
    assert main(["evaluate", "--prm", str(prm), "--processbench", *files, "--out", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text()), pq.read_table(out / "step_scores.parquet").to_pydict()


def _files(shared_data: Path) -> list[str]:
    return [str(shared_data / "processbench" / n) for n in ("gsm8k.json", "math.json")]


def test_every_layout_is_detected_and_evaluated(prms: dict[str, Path], shared_data: Path, tmp_path: Path) -> None:
    files = _files(shared_data)
    for fmt, folder in prms.items():
        assert detect_format(folder) == fmt
        metrics, scores = _run(folder, files, tmp_path / fmt, "--limit", "6")
        assert metrics["format"] == fmt and set(metrics["processbench"]) == {"gsm8k", "math", "mean"}
        assert metrics["prompt_format"] == {"prmforge": "raw", "qwen2-prm": "chat"}.get(fmt, "raw")
        preds = [json.loads(x) for x in (tmp_path / fmt / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == 12 and {p["subset"] for p in preds} == {"gsm8k", "math"}
        vals = [s for s in scores["score"] if not math.isnan(s)]
        unscored = metrics["unscored"]["all"]  # steps that did not fit are reported, not silent
        assert unscored["steps"] == len(scores["score"]) and unscored["unscored"] == len(scores["score"]) - len(vals)
        assert len(vals) > 40 and all(0.0 <= s <= 1.0 for s in vals)
        assert max(vals) - min(vals) > 0.05, f"{fmt}: scores must vary"
        assert metrics["mlflow_run_id"]  # logged as an evaluation run


def test_layouts_read_each_step_once(prms: dict[str, Path]) -> None:
    steps = ["3 + 4 = 7", "a step with\na newline and ки inside", "The answer is 7."]
    for fmt in ("qwen2-prm", "math-shepherd", "token-classify"):
        layout = open_layout(prms[fmt], fmt)
        e = layout.encode("Tom has 3 apples.", steps)
        assert len(e.positions) == 3 and e.dropped == 0
        assert layout.hf_scores([e])[0] == pytest.approx(layout.hf_scores([e])[0])
        short = open_layout(prms[fmt], fmt)
        short.max_length = e.positions[1] + 1  # room for two steps only
        e2 = short.encode("Tom has 3 apples.", steps)
        assert len(e2.positions) == 2 and e2.dropped == 1
        got = short.hf_scores([e2])[0]
        assert len(got) == 3 and math.isnan(got[2])
        assert got[:2] == pytest.approx(layout.hf_scores([e])[0][:2], abs=1e-6)  # the kept steps read alike


def test_qwen2_prm_is_fed_as_its_model_card_says(prms: dict[str, Path], shared_data: Path, tmp_path: Path) -> None:
    """Qwen2.5-Math-PRM's card: system + user problem + assistant steps each followed by <extra_0>, through the
    checkpoint's chat template, scores at each <extra_0>. Without a template: today's raw format, and said so."""
    from prmforge.prm.layouts import QWEN_PRM_SYSTEM, QWEN_STEP_TOKEN

    layout = open_layout(prms["qwen2-prm"], "qwen2-prm")
    tok = layout.tokenizer
    problem, steps = "Tom has 3 apples.", ["3 + 4 = 7", "a step with <extra_0> inside", "The answer is 7."]
    messages = [{"role": "system", "content": QWEN_PRM_SYSTEM}, {"role": "user", "content": problem},
                {"role": "assistant", "content": QWEN_STEP_TOKEN.join(s.replace(QWEN_STEP_TOKEN, "") for s in steps)
                 + QWEN_STEP_TOKEN}]
    card = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert card.startswith("<|im_start|>system\nPlease reason step by step, and put your final answer within "
                           "\\boxed{}.<|im_end|>\n<|im_start|>user\nTom has 3 apples.<|im_end|>\n<|im_start|>assistant\n")
    assert card.endswith("The answer is 7.<extra_0><|im_end|>\n")
    e = layout.encode(problem, steps)
    tag = tok.convert_tokens_to_ids(QWEN_STEP_TOKEN)
    assert layout.prompt_format == "chat" and e.ids == tok.encode(card)
    assert e.positions == [i for i, t in enumerate(e.ids) if t == tag] and len(e.positions) == 3 and e.dropped == 0

    plain = tiny_qwen_math_prm(tmp_path / "plain", chat_template=False)
    raw = open_layout(plain, "qwen2-prm")
    assert raw.prompt_format == "raw" and not raw.tokenizer.decode(raw.encode(problem, steps).ids).startswith("<|im_start|>")
    metrics, _ = _run(plain, _files(shared_data), tmp_path / "raw", "--limit", "2", "--no-mlflow")
    assert (metrics["format"], metrics["prompt_format"]) == ("qwen2-prm", "raw")
    # this project's own export is encoded as its PRM was trained (prmforge_export.json), not as Qwen's card
    own = open_layout(prms["prmforge"] / EXPORT_DIR, "qwen2-prm")
    assert own.prompt_format == "raw" and own.info["step_token"] == "<|step|>"


def test_vllm_reads_the_adapter_layouts_like_transformers(prms: dict[str, Path], shared_data: Path,
                                                          tmp_path: Path) -> None:
    files = _files(shared_data)
    for fmt in ("qwen2-prm", "math-shepherd", "token-classify"):
        _, hf = _run(prms[fmt], files, tmp_path / f"{fmt}-hf", "--limit", "25", "--no-mlflow")
        metrics, vl = _run(prms[fmt], files, tmp_path / f"{fmt}-vllm", "--limit", "25", "--backend", "vllm",
                           "--no-mlflow")
        assert metrics["backend"] == "vllm"
        pairs = [(a, b) for a, b in zip(hf["score"], vl["score"], strict=True) if not math.isnan(a)]
        assert len(pairs) > 150
        diff = max(abs(a - b) for a, b in pairs)
        print(f"{fmt}: {len(pairs)} steps, max |p_hf - p_vllm| = {diff:.2e}")
        assert diff < 1e-3
        assert (tmp_path / f"{fmt}-hf" / "predictions.jsonl").read_text() == \
            (tmp_path / f"{fmt}-vllm" / "predictions.jsonl").read_text()


def test_unknown_folder_is_one_line(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    assert main(["evaluate", "--prm", str(tmp_path / "x"), "--processbench", *_files(shared_data),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a PRM folder in a known layout" in err and err.count("\n") == 1


def test_external_layout_from_s3(prms: dict[str, Path], shared_data: Path, tmp_path: Path, s3_root: str) -> None:
    """An s3:// folder (moto server over s3fs) is fetched once into the model cache and read like a local one."""
    from prmforge.storage import Storage

    uri = Storage(s3_root).put_dir(prms["math-shepherd"], "models", "shepherd")
    assert uri.startswith("s3://")
    files = _files(shared_data)
    metrics, remote = _run(uri, files, tmp_path / "s3", "--limit", "4", "--no-mlflow")
    _, local = _run(prms["math-shepherd"], files, tmp_path / "local", "--limit", "4", "--no-mlflow")
    assert metrics["format"] == "math-shepherd" and metrics["prm"] == uri
    assert [x if x == x else None for x in remote["score"]] == [x if x == x else None for x in local["score"]]
