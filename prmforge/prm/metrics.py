"""ProcessBench metrics, Best-of-N reranking and PRM diagnostics.

ProcessBench (Zheng et al., 2024): a sample's prediction is the index of the first
step whose score falls below a threshold (-1 if none). Accuracy on erroneous
samples is the exact match of that index with the labelled earliest error,
accuracy on correct samples is the share predicted -1, and F1 is their harmonic
mean. The threshold is chosen on a separate split (never on the reported one),
grouped by problem (solutions of one problem never straddle the split), from
the quantiles of the calibration scores (a PRM whose scores all lie below 0.01
still gets its best threshold), and reported with the figures.

A step the PRM did not score (``NaN``: it did not fit the context) counts as a
predicted error, as any unscored step must count as something; evaluation
reports how many there are and fails its blocking check beyond 1%.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from prmforge.schemas import register_schema


@dataclass
class Sample:
    """One ProcessBench-format sample with the PRM's step scores."""

    id: str
    subset: str
    steps: list[str]
    label: int  # earliest wrong step, -1 if the solution is correct
    final_answer_correct: bool
    scores: list[float] = field(default_factory=list)
    group: str = ""  # problem id (else the problem text groups): splits never separate samples of one problem
    problem: str = ""


def predicted_first_error(scores: Sequence[float], threshold: float) -> int:
    """Index of the first step scored below ``threshold`` (NaN = unscored counts as wrong), else -1."""
    for i, s in enumerate(scores):
        if math.isnan(s) or s < threshold:
            return i
    return -1


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def processbench_scores(samples: Sequence[Sample], threshold: float) -> dict[str, float]:
    """``{error_acc, correct_acc, f1, n_error, n_correct}`` for one subset."""
    err = [s for s in samples if s.label >= 0]
    cor = [s for s in samples if s.label < 0]
    err_acc = sum(predicted_first_error(s.scores, threshold) == s.label for s in err) / len(err) if err else 0.0
    cor_acc = sum(predicted_first_error(s.scores, threshold) == -1 for s in cor) / len(cor) if cor else 0.0
    return {"error_acc": err_acc, "correct_acc": cor_acc, "f1": harmonic(err_acc, cor_acc),
            "n_error": float(len(err)), "n_correct": float(len(cor))}


def processbench_report(samples: Sequence[Sample], threshold: float) -> dict[str, dict[str, float]]:
    """Per-subset scores plus ``mean`` (unweighted over subsets, as in ProcessBench)."""
    subsets = sorted({s.subset for s in samples})
    out = {name: processbench_scores([s for s in samples if s.subset == name], threshold) for name in subsets}
    if subsets:
        out["mean"] = {k: sum(out[n][k] for n in subsets) / len(subsets) for k in ("error_acc", "correct_acc", "f1")}
    return out


def threshold_candidates(samples: Sequence[Sample], n_quantiles: int = 200) -> list[float]:
    """Thresholds from the score distribution: its quantiles, and one just above the top score.

    A threshold ``t`` flags steps scored below ``t``: the lowest quantile flags
    none, the last candidate flags all; in between, the quantiles follow the
    scores wherever they lie (a fixed 0.01-0.99 grid misses a PRM scoring 1e-4).
    """
    vals = sorted(v for x in samples for v in x.scores if not math.isnan(v))
    if not vals:
        return [0.5]
    qs = {vals[min(len(vals) - 1, round(i * (len(vals) - 1) / n_quantiles))] for i in range(n_quantiles + 1)}
    return sorted(qs) + [math.nextafter(vals[-1], math.inf)]


def choose_threshold(samples: Sequence[Sample], grid: Sequence[float] | None = None) -> float:
    """The threshold maximising mean-over-subsets F1 on ``samples`` (the calibration split).

    ``grid``: the candidates; by default :func:`threshold_candidates` of the samples' own scores.
    """
    grid = list(grid) if grid is not None else threshold_candidates(samples)
    best, best_f1 = grid[0] if grid else 0.5, -1.0
    for t in grid:
        f1 = processbench_report(samples, t).get("mean", {}).get("f1", 0.0)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = t, f1
    return best


def problem_group(s: Sample) -> str:
    """The split key: the problem id, else the problem text (whitespace-normalised), else the sample id.

    ProcessBench rows carry no problem id and several solutions per problem
    (400 gsm8k rows, 375 problems): grouping by sample id would put solutions
    of one problem on both sides of the split.
    """
    return s.group or " ".join(s.problem.split()) or s.id


def split_calibration(samples: Sequence[Sample], fraction: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(calibration, test) split by problem group, stratified by subset, deterministic."""
    calib, test = [], []
    for subset in sorted({s.subset for s in samples}):
        groups = sorted({problem_group(s) for s in samples if s.subset == subset})
        random.Random(f"{seed}:{subset}").shuffle(groups)
        k = max(1, round(len(groups) * fraction)) if len(groups) > 1 else 0
        chosen = set(groups[:k])
        for s in samples:
            if s.subset == subset:
                (calib if problem_group(s) in chosen else test).append(s)
    return calib, test


def unscored_report(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Per subset (and ``all``): steps, unscored steps (NaN), their share, samples with any unscored step."""
    out: dict[str, dict[str, float]] = {}
    for name in [*sorted({s.subset for s in samples}), "all"]:
        group = [s for s in samples if name in ("all", s.subset)]
        steps = sum(len(s.scores) for s in group)
        unscored = sum(1 for s in group for v in s.scores if math.isnan(v))
        out[name] = {"steps": float(steps), "unscored": float(unscored),
                     "unscored_share": unscored / steps if steps else 0.0,
                     "samples_with_unscored": float(sum(any(math.isnan(v) for v in s.scores) for s in group))}
    return out


# ---- Best-of-N ------------------------------------------------------------------
@dataclass
class Candidate:
    """One sampled solution of a BoN problem."""

    answer: str | None
    correct: bool
    scores: list[float]


def aggregate(scores: Sequence[float], how: str) -> float:
    """Solution score from step scores: ``min``, ``prod`` or ``last`` (empty/NaN → -inf)."""
    vals = [s for s in scores if not math.isnan(s)]
    if not vals or len(vals) != len(scores):
        return -math.inf
    if how == "min":
        return min(vals)
    if how == "prod":
        return math.prod(vals)
    if how == "last":
        return vals[-1]
    raise ValueError(f"unknown aggregation {how!r}")


def majority_correct(cands: Sequence[Candidate]) -> bool:
    """Majority vote over extracted answers (ties → the answer seen first); None never wins."""
    answers = [c.answer for c in cands if c.answer is not None]
    if not answers:
        return False
    counts = Counter(answers)
    top = max(counts.values())
    winner = next(a for a in answers if counts[a] == top)
    return any(c.correct for c in cands if c.answer == winner)


def best_of_n(problems: Sequence[Sequence[Candidate]], n: int | None = None) -> dict[str, float]:
    """Accuracy of PRM reranking (min/prod/last) vs majority, random (expected) and pass@N.

    Only the first ``n`` candidates of each problem are used, so one sampling run
    gives every point of a BoN-vs-N curve.
    """
    out = {k: 0.0 for k in ("prm_min", "prm_prod", "prm_last", "majority", "random", "pass_at_n")}
    if not problems:
        return out
    for cands in problems:
        cands = list(cands)[:n] if n else list(cands)
        if not cands:
            continue
        for how in ("min", "prod", "last"):
            best = max(range(len(cands)), key=lambda i: (aggregate(cands[i].scores, how), -i))
            out[f"prm_{how}"] += float(cands[best].correct)
        out["majority"] += float(majority_correct(cands))
        out["random"] += sum(c.correct for c in cands) / len(cands)
        out["pass_at_n"] += float(any(c.correct for c in cands))
    return {k: v / len(problems) for k, v in out.items()}


# ---- diagnostics -------------------------------------------------------------------
def min_on_last_step_share(samples: Sequence[Sample]) -> float:
    """Share of multi-step solutions whose lowest step score is on the final step.

    A PRM that behaves like an outcome model puts its minimum on the last step; a
    high share on erroneous samples means it is not locating process errors.
    """
    multi = [s for s in samples if len(s.scores) > 1 and not any(math.isnan(x) for x in s.scores)]
    if not multi:
        return 0.0
    return sum(min(range(len(s.scores)), key=lambda i: s.scores[i]) == len(s.scores) - 1 for s in multi) / len(multi)


def rawp_detection(samples: Sequence[Sample], threshold: float) -> dict[str, float]:
    """On right-answer-wrong-process samples: share flagged at all, and share located exactly."""
    rawp = [s for s in samples if s.final_answer_correct and s.label >= 0]
    if not rawp:
        return {"n": 0.0, "flagged": 0.0, "exact": 0.0}
    preds = [predicted_first_error(s.scores, threshold) for s in rawp]
    return {"n": float(len(rawp)), "flagged": sum(p >= 0 for p in preds) / len(rawp),
            "exact": sum(p == s.label for p, s in zip(preds, rawp, strict=True)) / len(rawp)}


def step_calibration(samples: Sequence[Sample], bins: int = 10) -> dict[str, list[float] | float]:
    """Reliability table of step scores vs step correctness, and the expected calibration error.

    Steps before the earliest error are correct, the error step is wrong; steps after
    it have no ground truth in ProcessBench and are left out.
    """
    pairs: list[tuple[float, float]] = []
    for s in samples:
        last = len(s.scores) - 1 if s.label < 0 else min(s.label, len(s.scores) - 1)
        for i in range(last + 1):
            if not math.isnan(s.scores[i]):
                pairs.append((s.scores[i], 0.0 if i == s.label else 1.0))
    conf, acc, count = [0.0] * bins, [0.0] * bins, [0] * bins
    for p, y in pairs:
        b = min(bins - 1, int(p * bins))
        conf[b] += p
        acc[b] += y
        count[b] += 1
    mean_conf = [conf[b] / count[b] if count[b] else math.nan for b in range(bins)]
    mean_acc = [acc[b] / count[b] if count[b] else math.nan for b in range(bins)]
    ece = sum(count[b] * abs(mean_conf[b] - mean_acc[b]) for b in range(bins) if count[b]) / max(1, len(pairs))
    return {"confidence": mean_conf, "accuracy": mean_acc, "count": [float(c) for c in count], "ece": ece}


def plot_calibration(calib: dict, path: str) -> str:
    """Reliability diagram as PNG (matplotlib Agg, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    pts = [(c, a) for c, a in zip(calib["confidence"], calib["accuracy"], strict=True) if not math.isnan(c)]
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"PRM (ECE {calib['ece']:.3f})")
    ax.set_xlabel("predicted P(step correct)")
    ax.set_ylabel("observed share correct")
    ax.set_title("Step-score calibration")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bon_curve(curve: dict[int, dict[str, float]], path: str) -> str:
    """Accuracy vs N for each selection method, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(curve)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key in ("prm_min", "prm_prod", "prm_last", "majority", "random", "pass_at_n"):
        ax.plot(ns, [curve[n][key] for n in ns], "o-", label=key)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N (samples per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title("Best-of-N")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bon_curve(problems: Sequence[Sequence[Candidate]], max_n: int) -> dict[int, dict[str, float]]:
    """``best_of_n`` at N = 1, 2, 4, ... up to ``max_n`` (``max_n`` itself always included)."""
    ns, n = [], 1
    while n < max_n:
        ns.append(n)
        n *= 2
    ns.append(max_n)
    return {k: best_of_n(problems, k) for k in ns}


def summary_markdown(report: dict[str, dict[str, float]], threshold: float, bon: dict[str, float] | None,
                     extra: dict[str, float] | None = None, notes: Sequence[str] = ()) -> str:
    """The evaluation as a markdown table for the Dagster UI; ``notes`` (warnings, sampling) go first."""
    lines = [f"> {n}" for n in notes] + ([""] if notes else [])
    lines += [f"**ProcessBench-format** (threshold {threshold:.4g}, chosen on a separate split)", "",
              "| subset | error acc | correct acc | F1 | erroneous | correct |", "|---|---|---|---|---|---|"]
    for name, r in report.items():
        counts = (f"{r['n_error']:.0f} | {r['n_correct']:.0f}" if "n_error" in r else " | ")
        lines.append(f"| {name} | {r['error_acc']:.3f} | {r['correct_acc']:.3f} | {r['f1']:.3f} | {counts} |")
    if bon:
        lines += ["", "**Best-of-N**", "", "| method | accuracy |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in bon.items()]
    if extra:
        lines += ["", "**Diagnostics**", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in extra.items()]
    return "\n".join(lines)


STEP_SCORES = "prm_step_scores"
STEP_SCORES_SCHEMA = register_schema(STEP_SCORES, pa.schema([
    pa.field("subset", pa.string(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),  # calibration | test
    pa.field("label", pa.int64(), nullable=False),  # the sample's earliest wrong step, -1 if correct
    pa.field("step", pa.int64(), nullable=False),
    pa.field("score", pa.float64()),  # P(step correct); null when the step did not fit the context
]))


def step_scores_table(splits: dict[str, Sequence[Sample]]) -> pa.Table:
    """One row per scored (or unscored) benchmark step, so any F1 can be recomputed without the model."""
    rows = [{"subset": x.subset, "id": str(x.id), "split": split, "label": int(x.label), "step": i,
             "score": None if sc is None or sc != sc else float(sc)}
            for split, samples in splits.items() for x in samples for i, sc in enumerate(x.scores)]
    return pa.Table.from_pylist(rows, schema=STEP_SCORES_SCHEMA)
