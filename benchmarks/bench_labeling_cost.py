"""Cost of Monte Carlo step labelling: search strategies against ``per_step`` on the same rollouts.

For each seed, the policy samples ``--n`` rollouts of ``--problems`` held-out
world problems, and every strategy labels the same rollouts with the same K,
engine, sampling seed and grader:

* ``per_step``: every prefix but the last, K completions each (the baseline);
* ``binary``: binary search for the first zero (OmegaPRM's search);
* ``binary+reuse``: binary search sharing evidence between the rollouts of a
  problem (shared prefixes sampled once, prefixes a correct rollout or
  completion passes through proven positive);
* ``binary+adaptive``: binary search, each prefix sampled in waves and
  stopped at its first correct completion (K is the maximum);
* ``binary+reuse+adaptive``: both;
* ``binary+adaptive+verify`` (and ``+reuse``): binary search, then every
  prefix it only inferred positive is probed in ascending order until the
  first zero, and correct rollouts are scanned the same way: ``per_step``'s
  first error by construction (same completions), at the cost printed;
* ``per_step+adaptive+verify`` (and ``+reuse``): the same scan without the
  binary phase (prefixes in ascending order, stop at the first zero);
* ``per_step (seed+1)``: ``per_step`` again with another sampling seed on the
  same rollouts: its agreement with ``per_step`` is the noise ceiling, what
  any K-sample estimate that does not reuse ``per_step``'s own completions
  can reach against it.

Printed per seed and strategy: completions and generated tokens per labelled
rollout, the token ratio against ``per_step`` measured in the same run,
first-error agreement with ``per_step``, exact first-error agreement of MC
with the world oracle, and the calculator-judge consensus (exact vs oracle,
kept share). Then the mean and the spread (min-max) over the seeds.

The HF engine's sampling is counter-based (sample ``j`` of a prompt depends on
the seed, the prompt text and ``j`` only), so a prefix probed by two
strategies gets the same completions, and adaptive waves are a prefix of the
same K: strategies differ only in what they probe and what they reuse (a ``verify``
row agreeing below 100% would show that this does not hold).

Usage, as measured in README.md and docs/labeling.md (``P`` is the demo
policy ``make demo`` trains; a ``--policy`` folder without a model gets the
demo-default policy trained into it, on ``--policy-difficulty``)::

    P=$PRMFORGE_HOME/storage/models/policy/851e010a6bf82fc8
    .venv/bin/python benchmarks/bench_labeling_cost.py --policy $P --problems 100 --n 2 --k 8
    .venv/bin/python benchmarks/bench_labeling_cost.py --policy $P --difficulty standard --problems 50 --n 4 --k 8
    # issue 18's setting: a policy trained on standard (1,000 steps), trained into the folder when empty
    .venv/bin/python benchmarks/bench_labeling_cost.py --policy .prmforge/bench/policy-std-1000 \\
        --policy-difficulty standard --train-steps 1000 --difficulty standard --problems 50 --n 4 --k 8

Targets (issue 18, on the standard world with a policy trained there):
tokens per labelled rollout <= 1/4 of per_step at >= 95% first-error
agreement with per_step; consensus >= 0.95 exact against the oracle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_POLICY = Path(".prmforge/bench/policy-demo")
STRATEGIES = {  # name -> (mode, reuse, adaptive, verify, sampling seed offset)
    "per_step": ("per_step", False, False, False, 0),
    "per_step (seed+1)": ("per_step", False, False, False, 1),
    "binary": ("binary_search", False, False, False, 0),
    "binary+reuse": ("binary_search", True, False, False, 0),
    "binary+adaptive": ("binary_search", False, True, False, 0),
    "binary+reuse+adaptive": ("binary_search", True, True, False, 0),
    "binary+adaptive+verify": ("binary_search", False, True, True, 0),
    "binary+reuse+adaptive+verify": ("binary_search", True, True, True, 0),
    "per_step+adaptive+verify": ("per_step", False, True, True, 0),
    "per_step+reuse+adaptive+verify": ("per_step", True, True, True, 0),
}


# The llama policy the figures in docs/labeling.md were measured with (the demo's default until
# the demo moved to qwen2): a fresh clone trains the same weights (config hash 851e010a6bf82fc8 on
# `easy`, cb4d2fb7e0886687 on `standard` with 1,000 steps).
LLAMA_POLICY = {"architecture": "llama", "hidden_size": 128, "num_heads": 4, "intermediate_size": 384,
                "train_steps": 600}


def ensure_policy(path: Path, train_steps: int | None, difficulty: str) -> Path:
    """The policy folder, training the llama policy (on ``difficulty``) into it when absent."""
    if (path / "config.json").exists():
        return path
    from prmforge.policy.settings import PolicySettings
    from prmforge.policy.train import train_policy

    kw: dict = {**LLAMA_POLICY, "difficulty": difficulty}
    if train_steps is not None:
        kw["train_steps"] = train_steps
    settings = PolicySettings(**kw)
    print(f"training the llama policy ({difficulty}, {settings.train_steps} steps) into {path} ...", flush=True)
    res = train_policy(settings, path, log=lambda m: print(m, flush=True))
    print(f"trained {res.num_parameters} parameters in {res.seconds:.0f}s", flush=True)
    return path


def run_seed(engine, args: argparse.Namespace, seed: int) -> dict:
    """Rollouts of one seed labelled by every strategy; figures over the rollouts every strategy labelled."""
    from prmforge.answers import grade
    from prmforge.engines.base import SamplingParams
    from prmforge.labeling.audit import score
    from prmforge.labeling.calculator import first_wrong_step
    from prmforge.labeling.mc import AdaptiveValue, EngineValue, MCItem, default_grader, run_search
    from prmforge.world import STEP_SEPARATOR, generate_problems, oracle_first_error, prompt_for, split_steps

    problems = generate_problems(args.problems, seed=seed + 7, difficulty=args.difficulty, split="heldout")
    prompts = [prompt_for(p.problem) for p in problems]
    outs = engine.generate(prompts, SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=seed))
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
    out: dict = {"seed": seed, "rollouts": len(items),
                 "policy_accuracy": sum(i.final_correct for i in items) / max(len(items), 1),
                 "mean_steps": sum(len(i.steps) for i in items) / max(len(items), 1), "strategies": {}}
    grader = default_grader()
    results = {}
    for name in args.strategies:
        mode, reuse, adaptive, verify, offset = STRATEGIES[name]
        value = EngineValue(engine, grader, k=args.k, max_tokens=args.max_tokens, seed=seed + offset,
                            separator=STEP_SEPARATOR, batch_prefixes=args.batch_prefixes)
        fn = AdaptiveValue(value.sample, args.k, args.first_wave) if adaptive else value
        t = time.perf_counter()
        results[name] = {r.rollout_id: r for r in run_search(items, mode, fn, reuse=reuse, separator=STEP_SEPARATOR,
                                                             verify=verify)}
        out["strategies"][name] = {"wall_s": time.perf_counter() - t}
        print(f"  seed {seed}: {name} labelled in {out['strategies'][name]['wall_s']:.0f}s", flush=True)
    both = [i.rollout_id for i in items if all(res[i.rollout_id].status == "ok" for res in results.values())]
    n_both = max(len(both), 1)
    wrong = [i.rollout_id for i in items if i.rollout_id in set(both) and not i.final_correct]
    calc = {i.rollout_id: first_wrong_step(i.steps) for i in items}
    ps = results["per_step"]
    for name, res in results.items():
        kept = [r for r in both if res[r].first_error == calc[r]]
        out["strategies"][name].update({
            "completions_per_rollout": sum(res[r].completions for r in both) / n_both,
            "tokens_per_rollout": sum(res[r].generated_tokens for r in both) / n_both,
            "probes_per_rollout": sum(len(res[r].probe_steps) for r in both) / n_both,
            "agreement_with_per_step": sum(res[r].first_error == ps[r].first_error for r in both) / n_both,
            "agreement_on_wrong_answers": sum(res[r].first_error == ps[r].first_error for r in wrong)
            / max(len(wrong), 1),
            "oracle_exact": score([(res[r].first_error, truth[r]) for r in both]).exact,
            "consensus_exact": score([(calc[r], truth[r]) for r in kept]).exact,
            "kept_share": len(kept) / n_both,
        })
    base = out["strategies"]["per_step"]["tokens_per_rollout"]
    for m in out["strategies"].values():
        m["token_ratio"] = base / max(m["tokens_per_rollout"], 1e-9)
        m["token_share_of_per_step"] = m["tokens_per_rollout"] / max(base, 1e-9)
    out["compared"] = len(both)
    out["calculator_exact"] = score([(calc[r], truth[r]) for r in both]).exact
    return out


def spread(values: list[float]) -> str:
    """``mean [min-max]`` of a figure over the seeds."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{statistics.mean(vals):.3f} [{min(vals):.3f}-{max(vals):.3f}]"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    ap.add_argument("--train-steps", type=int, default=None, help="only when the policy must be trained")
    ap.add_argument("--policy-difficulty", default="easy", help="world difficulty to train the policy on, if trained")
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--n", type=int, default=2, help="rollouts per problem")
    ap.add_argument("--k", type=int, default=8, help="completions per probed prefix (the maximum with adaptive)")
    ap.add_argument("--first-wave", type=int, default=2, help="adaptive: completions in a prefix's first wave")
    ap.add_argument("--difficulty", default="easy", help="world difficulty of the labelled problems")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="each seed draws other problems, rollouts and completions")
    ap.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES),
                    help="which to run (per_step, the baseline, always runs)")
    ap.add_argument("--batch-prefixes", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args(argv)
    args.strategies = ["per_step", *[s for s in args.strategies if s != "per_step"]]

    import torch

    torch.set_num_threads(args.threads)
    from prmforge.engines.hf import HFEngine

    policy = ensure_policy(args.policy, args.train_steps, args.policy_difficulty)
    engine = HFEngine(str(policy), device=args.device, batch_size=512)
    print(f"policy {policy}; {args.problems} {args.difficulty} held-out problems x {args.n} rollouts per seed; "
          f"K={args.k}; seeds {args.seeds}; CPU threads {args.threads}", flush=True)
    runs, start, load = [], time.perf_counter(), os.getloadavg()[0]
    for seed in args.seeds:
        t = time.perf_counter()
        run = run_seed(engine, args, seed)
        runs.append(run)
        print(f"\nseed {seed}: {run['rollouts']} rollouts, policy accuracy {run['policy_accuracy']:.1%}, "
              f"{run['mean_steps']:.2f} steps per rollout, calculator exact {run['calculator_exact']:.3f} "
              f"({time.perf_counter() - t:.0f}s)", flush=True)
        for name, m in run["strategies"].items():
            print(f"  {name:>30}: {m['completions_per_rollout']:5.2f} completions, {m['tokens_per_rollout']:6.1f} "
                  f"tokens per labelled rollout ({m['token_ratio']:.2f}x fewer than per_step); agreement with "
                  f"per_step {m['agreement_with_per_step']:.1%}; oracle exact {m['oracle_exact']:.3f}; consensus "
                  f"{m['consensus_exact'] or 0:.3f} (kept {m['kept_share']:.1%}); {m['wall_s']:.0f}s", flush=True)
    summary: dict = {"policy": str(policy), "difficulty": args.difficulty, "problems": args.problems, "n": args.n,
                     "k": args.k, "seeds": args.seeds, "runs": runs, "spread": {}}
    print(f"\nover {len(runs)} seeds: mean [min-max]; policy accuracy "
          f"{spread([r['policy_accuracy'] for r in runs])}, steps {spread([r['mean_steps'] for r in runs])}")
    for name in args.strategies:
        fig = {key: spread([r["strategies"][name][key] for r in runs])
               for key in ("completions_per_rollout", "tokens_per_rollout", "token_ratio",
                           "token_share_of_per_step", "agreement_with_per_step", "oracle_exact",
                           "consensus_exact", "kept_share")}
        summary["spread"][name] = fig
        print(f"  {name:>30}: tokens/rollout {fig['tokens_per_rollout']}, share of per_step "
              f"{fig['token_share_of_per_step']}, x fewer {fig['token_ratio']}, agreement "
              f"{fig['agreement_with_per_step']}, oracle {fig['oracle_exact']}, consensus {fig['consensus_exact']} "
              f"kept {fig['kept_share']}")
    summary["wall_s"], summary["load_1min"] = time.perf_counter() - start, [load, os.getloadavg()[0]]
    print(f"wall {summary['wall_s']:.0f}s; 1-minute load average {load:.2f} at the start, "
          f"{summary['load_1min'][1]:.2f} at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    engine.close()
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
