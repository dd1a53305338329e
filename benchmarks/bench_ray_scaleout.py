"""Ray scale-out of rollouts: shards/s with 1 vs 2 engine actors, and what 100k rollouts would need.

Generates rollouts of world problems with the tiny random Qwen2 (built on the
fly, nothing downloaded) through :func:`prmforge.rollouts.generate_rollouts`
over a local Ray runtime (127.0.0.1, no dashboard, one CPU and one torch thread
per actor), once with 1 actor and once with 2, each into a fresh storage root.
Reports wall time, shards/s over the whole run (actor start and model load
included) and in steady state (from the first finished shard to the last),
the 2-vs-1 ratio, and that all runs produced the same table. On a 2-core
machine the ratio is bounded by the cores (and by whatever else runs there).

From the measured completion tokens per rollout it then writes what a GPU
cluster would need for 100k rollouts, given a per-GPU decode rate
(``--gpu-tokens-per-s``: an assumption to replace with your engine's measured
figure, e.g. from ``benchmarks/bench_sampling.py`` on the target GPU).

    .venv/bin/python benchmarks/bench_ray_scaleout.py [--problems 64 --shard-size 4 --n 4 --max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=4)
    ap.add_argument("--n", type=int, default=4, help="rollouts per problem")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--gpu-tokens-per-s", type=float, default=2500.0,
                    help="assumed decode rate of one GPU actor (vLLM, batched), completion tokens/s")
    ap.add_argument("--gpus", type=int, default=8, help="GPU actors of the cluster in the projection")
    args = ap.parse_args()

    from prmforge import env

    env.ray_loopback_only()
    import pyarrow as pa
    import ray

    from prmforge.distributed.ray_pool import RayConnection, RayExecutor
    from prmforge.engines.factory import EngineConfig, make_engine
    from prmforge.engines.tiny import build_tiny_qwen2
    from prmforge.prompts import PolicyPrompt
    from prmforge.rollouts import RolloutSettings, generate_rollouts
    from prmforge.schemas import SEED_PROBLEMS
    from prmforge.storage import Storage
    from prmforge.world import generate_problems

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=200 * 1024 * 1024, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    results: dict[int, dict] = {}
    tables: dict[int, pa.Table] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_qwen2(Path(tmp) / "tiny")
        cfg = EngineConfig(model=str(model), device="cpu", batch_size=64, num_threads=1)
        seed = pa.Table.from_pylist([
            {"problem_id": f"bench-{p.problem_id}", "dataset": "bench", "problem": p.problem, "answer": p.answer,
             "split": "train", "source_row": i, "meta": "{}"}
            for i, p in enumerate(generate_problems(args.problems, seed=7))], schema=SEED_PROBLEMS)
        settings = RolloutSettings(n=args.n, max_tokens=args.max_tokens, shard_size=args.shard_size)
        for actors in (1, 2):
            arrivals: list[float] = []
            start = time.monotonic()
            run = generate_rollouts(
                Storage(f"file://{tmp}/root-{actors}"), "bench", seed, settings, cfg.identity(),
                partial(make_engine, cfg), True, prompt=PolicyPrompt("world"),
                on_progress=lambda p, tps, a=arrivals: a.append(time.monotonic()),
                executor=RayExecutor(connection=RayConnection(address="local"), num_actors=actors))
            wall = time.monotonic() - start
            steady = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
            tables[actors] = run.table
            results[actors] = {
                "actors": actors, "shards": run.shards_total, "rollouts": run.table.num_rows,
                "wall_s": round(wall, 2), "shards_per_s": round(run.shards_total / wall, 3),
                "steady_shards_per_s": round(steady, 3),
                "completion_tokens": run.completion_tokens_computed,
                "tokens_per_rollout": round(run.completion_tokens_computed / max(run.table.num_rows, 1), 2),
            }
            print(json.dumps(results[actors]), flush=True)
    ray.shutdown()
    one, two = results[1], results[2]
    tokens_per_rollout = two["tokens_per_rollout"]
    total_tokens = 100_000 * tokens_per_rollout
    gpu_hours = total_tokens / args.gpu_tokens_per_s / 3600
    summary = {
        "speedup_shards_per_s": round(two["shards_per_s"] / one["shards_per_s"], 3),
        "speedup_steady": round(two["steady_shards_per_s"] / one["steady_shards_per_s"], 3)
        if one["steady_shards_per_s"] else None,
        "tables_identical": tables[1].equals(tables[2]),
        "note": "2 actors on a 2-core machine shared with other jobs: the ratio is bounded by the cores",
        "per_100k_rollouts": {
            "completion_tokens": int(total_tokens),
            "assumed_gpu_tokens_per_s": args.gpu_tokens_per_s,
            "gpu_hours": round(gpu_hours, 3),
            f"wall_hours_on_{args.gpus}_gpus": round(gpu_hours / args.gpus, 3),
            "shards": -(-100_000 // (args.n * args.shard_size)),
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
