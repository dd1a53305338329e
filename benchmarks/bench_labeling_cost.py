"""Cost of Monte Carlo step labelling: ``binary_search`` against ``per_step`` on the same rollouts.

Both modes label the same policy rollouts with the same K, engine, seed and
grader. Printed per mode: completions and generated tokens per labelled
rollout, wall time; then the binary_search/per_step token ratio and the
agreement of the two modes on the first-error index. As a bonus, both modes,
the calculator judge and their consensus are scored against the world oracle.

The HF engine's sampling is counter-based (a sample depends on the seed, the
prompt text and its index only), so a prefix probed by both modes gets the
same K completions: disagreement between the modes then comes only from the
search itself (binary search trusts a monotone value estimate; a finite-K
estimate is not always monotone).

Usage::

    .venv/bin/python benchmarks/bench_labeling_cost.py                # trains the demo policy if needed
    .venv/bin/python benchmarks/bench_labeling_cost.py --policy PATH --problems 100 --n 2 --k 8

Targets (issue 5): >= 2.5x fewer generated tokens for binary_search with
>= 95% first-error agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_POLICY = Path(".prmforge/bench/policy-demo")


def ensure_policy(path: Path, train_steps: int | None) -> Path:
    """The policy folder, training the demo-default policy into it when absent."""
    if (path / "config.json").exists():
        return path
    from prmforge.policy.settings import PolicySettings
    from prmforge.policy.train import train_policy

    settings = PolicySettings() if train_steps is None else PolicySettings(train_steps=train_steps)
    print(f"training the demo policy into {path} ({settings.train_steps} steps) ...", flush=True)
    res = train_policy(settings, path, log=lambda m: print(m, flush=True))
    print(f"trained {res.num_parameters} parameters in {res.seconds:.0f}s", flush=True)
    return path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    ap.add_argument("--train-steps", type=int, default=None, help="only when the policy must be trained")
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--n", type=int, default=2, help="rollouts per problem")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--difficulty", default="easy")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-prefixes", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from prmforge.answers import grade
    from prmforge.engines.base import SamplingParams
    from prmforge.engines.hf import HFEngine
    from prmforge.labeling.audit import score
    from prmforge.labeling.calculator import first_wrong_step
    from prmforge.labeling.mc import EngineValue, MCItem, default_grader, run_search
    from prmforge.world import STEP_SEPARATOR, generate_problems, oracle_first_error, prompt_for, split_steps

    policy = ensure_policy(args.policy, args.train_steps)
    engine = HFEngine(str(policy), device=args.device, batch_size=512)
    problems = generate_problems(args.problems, seed=args.seed + 7, difficulty=args.difficulty, split="heldout")

    t0 = time.perf_counter()
    prompts = [prompt_for(p.problem) for p in problems]
    outs = engine.generate(prompts, SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens,
                                                   seed=args.seed))
    items, truth = [], {}
    for p, prompt, comps in zip(problems, prompts, outs, strict=True):
        for j, c in enumerate(comps):
            steps = split_steps(c.text)
            if not steps:
                continue
            rid = f"{p.problem_id}-{j}"
            items.append(MCItem(rid, prompt, steps, p.answer, grade(c.text, p.answer)[1],
                                final_known=c.finish_reason != "length", text=c.text))
            truth[rid] = oracle_first_error(p.meta, steps).first_error
    rollout_s = time.perf_counter() - t0
    accuracy = sum(i.final_correct for i in items) / max(len(items), 1)
    print(f"policy {policy}; {len(items)} rollouts of {len(problems)} {args.difficulty} held-out problems "
          f"(accuracy {accuracy:.1%}, mean steps {sum(len(i.steps) for i in items) / max(len(items), 1):.2f}, "
          f"{rollout_s:.1f}s); K={args.k}; CPU threads {args.threads} on a shared machine", flush=True)

    summary: dict = {"rollouts": len(items), "policy_accuracy": accuracy, "k": args.k, "modes": {}}
    results, walls, calls = {}, {}, {}
    grader = default_grader()
    for mode in ("per_step", "binary_search"):
        value = EngineValue(engine, grader, k=args.k, max_tokens=args.max_tokens, seed=args.seed,
                            separator=STEP_SEPARATOR, batch_prefixes=args.batch_prefixes)
        t = time.perf_counter()
        results[mode] = {r.rollout_id: r for r in run_search(items, mode, value)}
        walls[mode], calls[mode] = time.perf_counter() - t, value.calls

    # costs and agreement over the rollouts both modes labelled (a probe can fail in one mode only)
    ps, bs = results["per_step"], results["binary_search"]
    both = [rid for rid in ps if ps[rid].status == "ok" and bs[rid].status == "ok"]
    n_both = max(len(both), 1)
    for mode, res in results.items():
        m = {
            "labelled": sum(r.status == "ok" for r in res.values()),
            "completions_per_rollout": sum(res[r].completions for r in both) / n_both,
            "tokens_per_rollout": sum(res[r].generated_tokens for r in both) / n_both,
            "probes_per_rollout": sum(len(res[r].probe_steps) for r in both) / n_both,
            "engine_calls": calls[mode],
            "wall_s": walls[mode],
            "oracle": score([(res[r].first_error, truth[r]) for r in both]).__dict__,
        }
        summary["modes"][mode] = m
        print(f"{mode:>14}: {m['completions_per_rollout']:.1f} completions, {m['tokens_per_rollout']:.0f} "
              f"generated tokens, {m['probes_per_rollout']:.2f} probes per labelled rollout; "
              f"{m['labelled']} labelled, {m['engine_calls']} engine calls, {walls[mode]:.1f}s; "
              f"oracle exact {m['oracle']['exact']:.3f}", flush=True)

    agree = sum(ps[rid].first_error == bs[rid].first_error for rid in both) / n_both
    correct_ids = {i.rollout_id for i in items if i.final_correct}
    wrong = [rid for rid in both if rid not in correct_ids]
    agree_wrong = sum(ps[rid].first_error == bs[rid].first_error for rid in wrong) / max(len(wrong), 1)
    tok_ratio = summary["modes"]["per_step"]["tokens_per_rollout"] / max(
        summary["modes"]["binary_search"]["tokens_per_rollout"], 1e-9)
    comp_ratio = summary["modes"]["per_step"]["completions_per_rollout"] / max(
        summary["modes"]["binary_search"]["completions_per_rollout"], 1e-9)
    summary.update(token_ratio=tok_ratio, completion_ratio=comp_ratio, agreement=agree,
                   agreement_on_wrong_answers=agree_wrong, compared=len(both))

    # bonus: calculator judge and consensus against the oracle, per MC mode
    calc = {i.rollout_id: first_wrong_step(i.steps) for i in items}
    summary["judge_oracle"] = score([(calc[r], truth[r]) for r in truth]).__dict__
    for mode, res in results.items():
        kept = [rid for rid, r in res.items() if r.status == "ok" and r.first_error == calc[rid]]
        summary["modes"][mode]["consensus_oracle"] = score([(calc[r], truth[r]) for r in kept]).__dict__
        summary["modes"][mode]["kept_share"] = len(kept) / max(len(res), 1)

    print(f"binary_search uses {tok_ratio:.2f}x fewer generated tokens ({comp_ratio:.2f}x fewer completions) "
          f"than per_step; first-error agreement {agree:.1%} ({len(both)} rollouts; {agree_wrong:.1%} on wrong "
          f"answers). Targets: >= 2.5x, >= 95%.")
    j = summary["judge_oracle"]
    print(f"oracle exact first error: calculator {j['exact']:.3f}; " + "; ".join(
        f"{mode} MC {m['oracle']['exact']:.3f}, consensus {m['consensus_oracle']['exact'] or 0:.3f} "
        f"(kept {m['kept_share']:.1%})" for mode, m in summary["modes"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    engine.close()
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
