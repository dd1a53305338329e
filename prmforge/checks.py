"""Asset-check outcomes computed by the core, independent of Dagster.

Why here: the core functions (``prmforge.rollouts``, ``prmforge.labeling.stages``)
know what makes their output valid; the assets only turn each outcome into an
``AssetCheckResult`` (``assets.common.check_result``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result: ``blocking`` checks fail as ERROR (downstream waits), the others WARN."""

    name: str
    passed: bool
    blocking: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    description: str | None = None  # shown with the result (why it failed, what was skipped)


def model_folder_outcome(ref: str, name: str = "model_complete") -> CheckOutcome:
    """Blocking: the stored model at ``ref`` is complete (marker), has ``config.json`` and safetensors weights.

    A half-written or pickle-only folder would fail the next stage minutes
    later on a GPU; this says so at the stage that wrote it.
    """
    from pathlib import Path

    from prmforge.model_files import require_safetensors, resolve_model_dir

    problems: list[str] = []
    try:
        local = resolve_model_dir(ref)
        if isinstance(local, str):
            problems.append(f"{ref} is not a stored folder")
        else:
            require_safetensors(local)
            if not (Path(local) / "config.json").is_file():
                problems.append("no config.json")
    except Exception as exc:  # noqa: BLE001 - every failure to open the folder is the finding
        problems.append(f"{type(exc).__name__}: {exc}")
    return CheckOutcome(name, not problems, True, {"uri": ref, "problems": problems},
                        "; ".join(problems) or None)


def training_outcomes(history: list[dict[str, float]], final_loss: float, rows: int, examples_in: int,
                      examples_kept: int, rejected: dict[str, int]) -> list[CheckOutcome]:
    """``training_sane`` (blocking: a finite loss, every training row used or counted as rejected) and
    ``loss_decreased`` (WARN: the mean loss of the last quarter of logged steps below the first quarter's).

    The trend only warns: on a few hundred noisy rows a healthy run's loss can
    wander, and a run resumed near its end logs too few steps to judge it.
    """
    import math

    problems: list[str] = []
    if not math.isfinite(final_loss):
        problems.append(f"final loss {final_loss} is not finite")
    counted = examples_kept + sum(rejected.values())
    if examples_in != rows or counted != examples_in:
        problems.append(f"rows not accounted for: {rows} selected, {examples_in} encoded, {examples_kept} kept "
                        f"+ {sum(rejected.values())} rejected")
    sane = CheckOutcome("training_sane", not problems, True, {
        "final_loss": final_loss, "rows": rows, "examples_kept": examples_kept, "rejected": rejected},
        "; ".join(problems) or None)
    losses = [h["loss"] for h in history if "loss" in h]
    q = len(losses) // 4
    if not q:
        return [sane, CheckOutcome("loss_decreased", True, False, {"steps_logged": len(losses)},
                                   "too few logged steps to judge (a resumed run)")]
    first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
    return [sane, CheckOutcome("loss_decreased", last < first, False,
                               {"loss_first_quarter": first, "loss_last_quarter": last, "steps_logged": len(losses)},
                               None if last < first else f"loss did not go down (first quarter {first:.4f}, "
                               f"last quarter {last:.4f})")]
