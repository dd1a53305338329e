"""Answer extraction and grading on real data: agreement with the sources' own correctness flags.

Usage (from the project root, with ``../shared/data`` present)::

    .venv/bin/python benchmarks/answer_agreement.py [../shared/data]

Figures (printed as JSON):

* ``gsm8k_reference``: every GSM8K reference solution (test + train) graded
  against its own ``#### x`` line, and again with that line rewritten as
  ``A: x``, ``The answer is x.`` and ``\\boxed{x}`` (each should be 100%);
* ``processbench_gsm8k``: ProcessBench's real model solutions (12 generators)
  graded against the GSM8K gold answer of their problem, compared with the
  benchmark's ``final_answer_correct`` flag; ``no_answer`` counts solutions in
  which no final answer was found;
* ``math_bon8``: 400 real Qwen2.5-Math solutions of 50 MATH problems graded
  against the gold answer, compared with the harness's own correctness flags.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prmforge.answers import extract_answer, grade


def _agreement(pairs: list[tuple[bool, bool]]) -> float:
    return round(sum(a == b for a, b in pairs) / max(1, len(pairs)), 4)


def measure(root: Path) -> dict[str, dict[str, float]]:
    """Agreement figures on the real files under ``root`` (the shared data folder)."""
    gold: dict[str, str] = {}
    refs: list[tuple[str, str]] = []
    for split in ("test", "train"):
        for line in (root / "gsm8k" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            answer = row["answer"].rsplit("####", 1)[1].strip()
            gold[row["question"].strip()] = answer
            refs.append((row["answer"], answer))
    out: dict[str, dict[str, float]] = {"gsm8k_reference": {"n": float(len(refs))}}
    body = [(text.rsplit("####", 1)[0], answer) for text, answer in refs]
    for name, render in (("hash", None), ("a_colon", "A: {}"), ("the_answer_is", "The answer is {}."),
                         ("boxed", "\\boxed{{{}}}")):
        texts = [t for t, _ in refs] if render is None else [b + render.format(a) for b, a in body]
        ok = sum(grade(t, a)[1] for t, (_, a) in zip(texts, refs, strict=True))
        out["gsm8k_reference"][f"correct_{name}"] = round(ok / len(refs), 4)
    pb = json.loads((root / "processbench" / "gsm8k.json").read_text())
    pairs, none = [], 0
    for row in pb:
        text = "\n\n".join(row["steps"])
        pred, ok = grade(text, gold[row["problem"].strip()])
        none += pred is None
        pairs.append((ok, bool(row["final_answer_correct"])))
    out["processbench_gsm8k"] = {"n": float(len(pb)), "agreement": _agreement(pairs), "no_answer": float(none)}
    pairs, none, same_pred = [], 0, 0
    n = 0
    for line in (root / "math" / "math_bon8_50.jsonl").read_text().splitlines():
        row = json.loads(line)
        for resp, flag, theirs in zip(row["response"], row["score"], row["pred"], strict=True):
            pred, ok = grade(resp, str(row["answer"]))
            none += extract_answer(resp) is None
            same_pred += pred == theirs
            pairs.append((ok, bool(flag)))
            n += 1
    out["math_bon8"] = {"n": float(n), "agreement": _agreement(pairs), "no_answer": float(none),
                        "same_extraction": round(same_pred / max(1, n), 4)}
    return out


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")), indent=1))
