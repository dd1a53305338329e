"""Calculator judge on real solutions: false alarms on right steps and error detection.

Usage (from the project root, with ``../shared/data`` present)::

    .venv/bin/python benchmarks/calculator_real.py [../shared/data]

Printed as JSON, per ProcessBench subset: flags on steps before the labelled
first error (those steps are right, so every flag is a false alarm), split by
correct and erroneous solutions; the share of correct solutions flagged at
all; on erroneous solutions the share whose first error is found exactly and
the share flagged at all. For GSM8K's reference solutions (test + train): how
many carry a flag (they contain a few genuine slips).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prmforge.labeling.calculator import check_statements, first_wrong_step


def measure(root: Path) -> dict[str, dict[str, float]]:
    """The figures above for the shared data folder ``root``."""
    out: dict[str, dict[str, float]] = {}
    for name in ("gsm8k", "math"):
        rows = json.loads((root / "processbench" / f"{name}.json").read_text())
        err = [r for r in rows if r["label"] >= 0]
        cor = [r for r in rows if r["label"] < 0]
        fig: dict[str, float] = {}
        for kind, group in (("correct", cor), ("erroneous", err)):
            fig[f"flags_on_right_steps_{kind}"] = float(sum(
                len(check_statements(step, i)) for r in group
                for i, step in enumerate(r["steps"][: len(r["steps"]) if r["label"] < 0 else r["label"]])))
        pred_err = [first_wrong_step(r["steps"]) for r in err]
        fig["correct_flagged"] = round(sum(first_wrong_step(r["steps"]) >= 0 for r in cor) / len(cor), 4)
        fig["erroneous_exact"] = round(sum(p == r["label"] for p, r in zip(pred_err, err, strict=True)) / len(err), 4)
        fig["erroneous_flagged"] = round(sum(p >= 0 for p in pred_err) / len(err), 4)
        out[f"processbench_{name}"] = fig
    refs = [json.loads(line)["answer"] for split in ("test", "train")
            for line in (root / "gsm8k" / f"{split}.jsonl").read_text().splitlines()]
    flagged = sum(first_wrong_step(a.split("\n")[:-1]) >= 0 for a in refs)
    out["gsm8k_reference"] = {"n": float(len(refs)), "solutions_flagged": float(flagged)}
    return out


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")), indent=1))
