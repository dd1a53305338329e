"""ProcessBench evaluation on the real files: full subsets, the model's context, unscored steps reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prmforge.prm.model import build_prm
from prmforge.prm.pipeline import evaluate
from prmforge.prm.settings import PRMEvalSettings
from prmforge.prm.tiny import build_tiny_backbone


@pytest.fixture
def real_prm(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """An untrained PRM on a 2,048-position backbone whose tokenizer was fitted on real ProcessBench text.

    Trained with max_length 256 (the old default): evaluation must still score with the full context.
    """
    rows = [r for name in ("gsm8k", "math") for r in json.loads((shared_data / "processbench" / f"{name}.json")
                                                               .read_text())]
    texts = [r["problem"] + "\n" + "\n".join(r["steps"]) for r in rows]
    folder = build_tiny_backbone(tmp_path_factory.mktemp("bb"), texts, hidden_size=16, layers=1, vocab_size=4000,
                                 max_positions=2048)
    return build_prm(str(folder), max_length=256)


def test_full_subsets_scored_with_the_models_context(real_prm, shared_data: Path, tmp_path: Path) -> None:
    model, tok = real_prm
    assert model.config.max_length == 256
    files = [str(shared_data / "processbench" / f"{name}.json") for name in ("gsm8k", "math")]
    rep = evaluate(model, tok, PRMEvalSettings(benchmarks=files, bon_problems=0, score_batch_size=8), tmp_path)
    c = rep.counts
    assert c["samples_available"] == 1400 and c["samples_test"] + c["samples_calibration"] == 1400  # no subsample
    assert c["scoring_max_length"] == 2048
    # the longest real solutions do not fit 2,048 tokens: counted per subset, never silent
    assert 0 < c["steps_unscored"] and c["unscored_share"] < 0.01, c
    assert rep.unscored["math"]["unscored"] == c["steps_unscored"] - rep.unscored["gsm8k"]["unscored"]
    flat = rep.flat_metrics()
    for key in ("gsm8k_f1", "gsm8k_error_acc", "gsm8k_correct_acc", "math_f1", "mean_f1", "mean_error_acc",
                "mean_correct_acc", "gsm8k_n_error", "math_unscored_share", "unscored_share"):
        assert key in flat, key
    assert rep.report["gsm8k"]["n_error"] + rep.report["gsm8k"]["n_correct"] < 400  # the test side only
    assert "did not fit" in rep.markdown() and "subsampled" not in rep.markdown()


def test_subsampling_and_short_context_are_reported(real_prm, shared_data: Path, tmp_path: Path) -> None:
    model, tok = real_prm
    s = PRMEvalSettings(benchmarks=[str(shared_data / "processbench" / "gsm8k.json")], bon_problems=0,
                        max_samples_per_subset=60, max_length=256)
    rep = evaluate(model, tok, s, tmp_path)
    assert rep.counts["samples_test"] + rep.counts["samples_calibration"] == 60
    assert rep.counts["scoring_max_length"] == 256 and rep.counts["unscored_share"] > 0.3
    md = rep.markdown()
    assert "subsampled: at most 60 samples per subset" in md and "gsm8k 60 of 400" in md
    assert "did not fit the PRM's context (256 tokens)" in md
