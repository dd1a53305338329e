"""Calibration of the bootstrap policy: is it a useful *policy for PRM data*, not a solver?

On held-out world problems, one sample each at temperature 1.0:

* final-answer accuracy must lie in ``ACCURACY_BAND`` (30-80%): enough right
  and enough wrong solutions to label;
* among wrong-answer solutions, arithmetic and logic first errors must each be
  at least ``MIN_KIND_SHARE`` (10%): a PRM must learn both;
* the first-error position histogram shows errors spread over the steps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prmforge.policy.sample import JudgedSample, policy_engine, sample_and_judge
from prmforge.policy.settings import PolicySettings
from prmforge.prompts import policy_prompt
from prmforge.world import generate_problems

ACCURACY_BAND = (0.30, 0.80)
MIN_KIND_SHARE = 0.10
KINDS = ("arithmetic", "logic", "format")


@dataclass
class CalibrationReport:
    """The numbers reported as ``policy_model`` metadata and by the benchmark script."""

    n: int
    accuracy: float
    process_correct: float
    wrong: int
    kind_shares: dict[str, float]  # among wrong-answer solutions
    kind_shares_all_errors: dict[str, float]  # among all oracle-flagged solutions
    right_answer_wrong_process: int
    first_error_histogram: dict[int, int] = field(default_factory=dict)
    truncated: int = 0
    in_band: bool = False
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def histogram_markdown(self) -> str:
        total = sum(self.first_error_histogram.values()) or 1
        lines = ["| first wrong step | solutions | share |", "|---:|---:|---:|"]
        for pos in sorted(self.first_error_histogram):
            c = self.first_error_histogram[pos]
            lines.append(f"| {pos} | {c} | {c / total:.1%} |")
        return "\n".join(lines)

    def summary(self) -> str:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in self.kind_shares.items())
        band = "in band" if self.in_band else "OUT OF BAND: " + "; ".join(self.reasons)
        return (f"accuracy {self.accuracy:.1%} over {self.n} (process-correct {self.process_correct:.1%}); "
                f"wrong-answer first errors: {shares}; right-answer-wrong-process "
                f"{self.right_answer_wrong_process}; {band}")


def report_from_samples(samples: list[JudgedSample]) -> CalibrationReport:
    """Aggregate judged samples into the calibration report."""
    n = len(samples)
    if n == 0:
        raise ValueError("no samples to calibrate on")
    correct = sum(s.final_answer_correct for s in samples)
    wrong = [s for s in samples if not s.final_answer_correct]
    erroneous = [s for s in samples if s.first_error >= 0]
    kinds_wrong = Counter(s.kind for s in wrong)
    kinds_err = Counter(s.kind for s in erroneous)
    shares = {k: (kinds_wrong[k] / len(wrong) if wrong else 0.0) for k in KINDS}
    shares_err = {k: (kinds_err[k] / len(erroneous) if erroneous else 0.0) for k in KINDS}
    hist = Counter(s.first_error for s in erroneous)
    accuracy = correct / n
    reasons = []
    if not ACCURACY_BAND[0] <= accuracy <= ACCURACY_BAND[1]:
        reasons.append(f"accuracy {accuracy:.1%} outside {ACCURACY_BAND[0]:.0%}-{ACCURACY_BAND[1]:.0%}")
    for k in ("arithmetic", "logic"):
        if shares[k] < MIN_KIND_SHARE:
            reasons.append(f"{k} share {shares[k]:.1%} < {MIN_KIND_SHARE:.0%}")
    return CalibrationReport(
        n=n,
        accuracy=accuracy,
        process_correct=sum(s.first_error == -1 for s in samples) / n,
        wrong=len(wrong),
        kind_shares=shares,
        kind_shares_all_errors=shares_err,
        right_answer_wrong_process=sum(s.final_answer_correct and s.first_error >= 0 for s in samples),
        first_error_histogram=dict(sorted(hist.items())),
        truncated=sum(s.finish_reason == "length" for s in samples),
        in_band=not reasons,
        reasons=reasons,
    )


def calibrate(model_dir: str | Path, settings: PolicySettings) -> tuple[CalibrationReport, list[JudgedSample]]:
    """Sample the policy once per held-out problem at ``calib_temperature`` and report."""
    problems = generate_problems(settings.calib_problems, settings.calib_seed, settings.difficulty,
                                 split="heldout")
    prompt = policy_prompt(str(model_dir))
    with policy_engine(model_dir, settings.sample_batch_size, settings.num_threads) as engine:
        samples = sample_and_judge(engine, problems, prompt, 1, settings.calib_temperature,
                                   settings.max_new_tokens, settings.calib_seed)
    return report_from_samples(samples), samples
