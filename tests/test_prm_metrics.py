"""Hand-computed ProcessBench F1, Best-of-N and diagnostics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from prmforge.prm.metrics import (
    Candidate,
    Sample,
    aggregate,
    best_of_n,
    bon_curve,
    choose_threshold,
    min_on_last_step_share,
    plot_bon_curve,
    plot_calibration,
    predicted_first_error,
    processbench_report,
    rawp_detection,
    split_calibration,
    step_calibration,
    threshold_candidates,
    unscored_report,
)


def S(label: int, scores: list[float], subset: str = "a", fac: bool = False, id: str = "") -> Sample:
    return Sample(id=id or f"{subset}-{label}-{scores}", subset=subset, steps=["s"] * len(scores), label=label,
                  final_answer_correct=fac, scores=scores)


def test_first_error_prediction() -> None:
    assert predicted_first_error([0.9, 0.4, 0.1], 0.5) == 1
    assert predicted_first_error([0.9, 0.8], 0.5) == -1
    assert predicted_first_error([0.9, math.nan], 0.5) == 1


def test_processbench_f1_by_hand() -> None:
    # Subset a: 4 erroneous (exact matches: 2), 2 correct (predicted -1: 1).
    a = [S(1, [0.9, 0.2, 0.1]), S(0, [0.1, 0.9]), S(2, [0.9, 0.9, 0.9]), S(1, [0.2, 0.9]),
         S(-1, [0.9, 0.8]), S(-1, [0.9, 0.3])]
    # Subset b: 1 erroneous matched, 1 correct matched.
    b = [S(0, [0.1], "b"), S(-1, [0.7], "b")]
    rep = processbench_report(a + b, 0.5)
    assert rep["a"]["error_acc"] == pytest.approx(0.5)
    assert rep["a"]["correct_acc"] == pytest.approx(0.5)
    assert rep["a"]["f1"] == pytest.approx(0.5)
    assert rep["b"]["f1"] == pytest.approx(1.0)
    assert rep["mean"]["f1"] == pytest.approx(0.75)  # unweighted over subsets
    assert rep["mean"]["error_acc"] == pytest.approx(0.75)
    # Harmonic mean with unequal parts: 2*1*0.5/1.5.
    rep2 = processbench_report([S(0, [0.1]), S(-1, [0.9]), S(-1, [0.1])], 0.5)
    assert rep2["a"]["f1"] == pytest.approx(2 / 3)


def test_threshold_chosen_on_calibration_split() -> None:
    samples = [S(0, [0.3], id="e1"), S(-1, [0.6], id="c1"), S(0, [0.35], id="e2"), S(-1, [0.7], id="c2")]
    t = choose_threshold(samples)
    assert 0.35 < t <= 0.6
    assert processbench_report(samples, t)["mean"]["f1"] == 1.0
    calib, test = split_calibration(samples * 1, 0.5, seed=1)
    assert len(calib) + len(test) == 4 and not {s.id for s in calib} & {s.id for s in test}


def test_threshold_follows_the_score_distribution() -> None:
    """A PRM whose scores all lie below 0.01 still gets its best threshold (a fixed 0.01-0.99 grid gives F1 0)."""
    samples = [S(1, [5e-4, 1e-5], id="e1"), S(0, [2e-5, 6e-4], id="e2"), S(-1, [5e-4, 4e-4], id="c1"),
               S(-1, [7e-4, 3e-4], id="c2")]
    old_grid = [i / 100 for i in range(1, 100)]
    assert processbench_report(samples, choose_threshold(samples, old_grid))["mean"]["f1"] == 0.0
    t = choose_threshold(samples)
    assert 2e-5 < t <= 3e-4
    assert processbench_report(samples, t)["mean"]["f1"] == 1.0
    cands = threshold_candidates(samples, n_quantiles=4)
    assert cands[0] == 1e-5 and cands[-1] > 7e-4 and cands == sorted(cands)
    assert threshold_candidates([S(0, [math.nan])]) == [0.5]


def test_split_groups_by_problem_text() -> None:
    """ProcessBench rows have no problem id: solutions of one problem stay on one side of the split."""
    samples = [Sample(id=f"gsm8k-{i}", subset="gsm8k", steps=["s"], label=-1, final_answer_correct=True,
                      scores=[0.5], problem=f"Problem  {i // 3}\n" if i % 2 else f"Problem {i // 3}")
               for i in range(60)]
    calib, test = split_calibration(samples, 0.3, seed=0)
    assert len(calib) + len(test) == 60 and calib and test
    norm = {" ".join(s.problem.split()) for s in calib} & {" ".join(s.problem.split()) for s in test}
    assert not norm


def test_unscored_report() -> None:
    rep = unscored_report([S(0, [0.1, math.nan, math.nan]), S(-1, [0.9]), S(-1, [0.4], "b")])
    assert rep["a"] == {"steps": 4.0, "unscored": 2.0, "unscored_share": 0.5, "samples_with_unscored": 1.0}
    assert rep["b"]["unscored"] == 0.0 and rep["all"]["steps"] == 5.0 and rep["all"]["unscored_share"] == 0.4


def test_best_of_n_by_hand() -> None:
    p1 = [Candidate("5", False, [0.9, 0.8]), Candidate("5", False, [0.9, 0.7]),
          Candidate("7", True, [0.95, 0.85])]
    p2 = [Candidate("1", True, [0.2, 0.99]), Candidate("2", False, [0.6, 0.5]), Candidate(None, False, [0.9])]
    bon = best_of_n([p1, p2])
    # p1: min picks #3 (0.85) correct; prod picks #3 (0.8075) correct; last picks #3 correct.
    # p2: min picks #3 (0.9) wrong; prod picks #3 (0.9) wrong; last picks #1 (0.99) correct.
    assert bon["prm_min"] == pytest.approx(0.5)
    assert bon["prm_prod"] == pytest.approx(0.5)
    assert bon["prm_last"] == pytest.approx(1.0)
    # majority: p1 "5" wrong; p2 tie 1 vs 2 → first seen "1" correct.
    assert bon["majority"] == pytest.approx(0.5)
    assert bon["random"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert bon["pass_at_n"] == pytest.approx(1.0)
    # N=1 uses only the first candidate of each problem.
    one = best_of_n([p1, p2], 1)
    assert one["prm_min"] == one["majority"] == one["random"] == pytest.approx(0.5)
    assert sorted(bon_curve([p1, p2], 3)) == [1, 2, 3]


def test_aggregate() -> None:
    assert aggregate([0.5, 0.4], "prod") == pytest.approx(0.2)
    assert aggregate([0.5, math.nan], "min") == -math.inf
    with pytest.raises(ValueError):
        aggregate([0.5], "mean")


def test_diagnostics(tmp_path: Path) -> None:
    samples = [S(1, [0.9, 0.1]), S(-1, [0.9, 0.8, 0.95]), S(0, [0.1, 0.9], fac=True), S(1, [0.9, 0.9], fac=True)]
    # Minimum on the last step: only #1 (#2 at index 1, #3 at 0, #4 ties and counts at index 0).
    assert min_on_last_step_share(samples) == pytest.approx(0.25)
    rawp = rawp_detection(samples, 0.5)
    assert rawp == {"n": 2.0, "flagged": 0.5, "exact": 0.5}
    cal = step_calibration(samples, bins=2)
    # Labelled steps: #1 (0.9 ok, 0.1 wrong), #2 (0.9, 0.8, 0.95 ok), #3 (0.1 wrong), #4 (0.9 ok, 0.9 wrong).
    assert cal["count"] == [2.0, 6.0]
    assert cal["accuracy"][0] == 0.0 and cal["accuracy"][1] == pytest.approx(5 / 6)
    png = plot_calibration(cal, str(tmp_path / "cal.png"))
    curve = plot_bon_curve(bon_curve([[Candidate("1", True, [0.5])] * 4], 4), str(tmp_path / "bon.png"))
    for p in (png, curve):
        assert Path(p).read_bytes()[:4] == b"\x89PNG"
