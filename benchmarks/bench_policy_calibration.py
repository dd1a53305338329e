"""Train the bootstrap policy with a profile's settings and print its calibration.

Usage: .venv/bin/python benchmarks/bench_policy_calibration.py [--profile demo] [--out DIR] [--set key=value ...]

Prints training time and steps/s, final-answer accuracy at T=1.0 on held-out
world problems, error-kind shares among wrong solutions and the first-error
histogram. The baseline measured in the same run is the gold solutions themselves
(100% final-answer accuracy, which checks the oracle and the answer extractor).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from prmforge.policy.calibration import calibrate
from prmforge.policy.train import train_policy
from prmforge.profiles import stage_settings
from prmforge.world import extract_answer, generate_problems, oracle_first_error


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--out", default=None)
    ap.add_argument("--set", nargs="*", default=[], help="settings overrides key=value (JSON values)")
    args = ap.parse_args()
    overrides = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    s = stage_settings("policy_model", args.profile, **overrides)
    print(f"profile {args.profile}; settings {s.model_dump()}")
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()} (the CPU is shared)")
    problems = generate_problems(s.calib_problems, s.calib_seed, s.difficulty, split="heldout")
    gold_ok = sum(extract_answer(p.solution_text()) == p.answer and oracle_first_error(p, p.steps).correct
                  for p in problems)
    print(f"baseline: gold solutions accuracy {gold_ok / len(problems):.1%} (oracle + extractor sanity)")
    out = args.out or tempfile.mkdtemp(prefix="bench-policy-")
    t0 = time.perf_counter()
    r = train_policy(s, out)
    t_train = time.perf_counter() - t0
    print(f"trained {r.num_parameters} parameters: {t_train:.1f}s total, {r.seconds:.1f}s in the loop, "
          f"{r.steps_per_second:.2f} steps/s, final loss {r.curve[-1][1]:.4f}")
    t1 = time.perf_counter()
    report, samples = calibrate(out, s)
    print(f"calibration ({time.perf_counter() - t1:.1f}s): {report.summary()}")
    print(f"kind shares among wrong answers: {report.kind_shares}")
    print(f"kind shares among all oracle-flagged: {report.kind_shares_all_errors}")
    print(f"truncated: {report.truncated}")
    print(report.histogram_markdown())
    for smp in samples[:3]:
        print("---", smp.kind, smp.detail, "\n" + smp.text)


if __name__ == "__main__":
    main()
