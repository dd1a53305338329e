"""Sampling throughput: HFEngine's own loop vs ``model.generate``, same run.

Both sample the same tiny random Qwen2 (built on the fly, nothing downloaded)
on the same prompts with the same settings: ``n`` samples per prompt
(``num_return_sequences`` for generate), temperature 1, top_p 1 (top_k off),
``max_tokens`` new tokens, left-padded batches of ``prompts x n`` rows.
Tokens/s counts generated tokens up to and including EOS. Prints both figures
and the ratio; runs on CUDA (bf16) too when a CUDA device is present.

    .venv/bin/python benchmarks/bench_sampling.py [--prompts 64 --n 16 --max-tokens 64 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def prompts_for(count: int) -> list[str]:
    from prmforge.world import generate_problems, prompt_for

    return [prompt_for(p.problem) for p in generate_problems(count, seed=123)]


def run_generate(engine, prompts: list[str], n: int, max_tokens: int, batch_rows: int) -> int:
    """``model.generate`` baseline; returns generated tokens (up to and incl. EOS)."""
    tok, model = engine.tokenizer, engine.model
    tok.padding_side = "left"
    eos = sorted(engine.eos_ids)
    per = max(1, batch_rows // n)
    total = 0
    for s in range(0, len(prompts), per):
        enc = tok(prompts[s : s + per], return_tensors="pt", padding=True).to(engine.device)
        torch.manual_seed(s)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 num_return_sequences=n, max_new_tokens=max_tokens, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        for row in new:
            k = next((i for i, t in enumerate(row) if t in eos), None)
            total += len(row) if k is None else k + 1
    return total


def run_engine(engine, prompts: list[str], n: int, max_tokens: int) -> int:
    from prmforge.engines.base import SamplingParams

    out = engine.generate(prompts, SamplingParams(n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens, seed=0))
    return sum(c.completion_tokens for row in out for c in row)


def bench(device: str, model_dir: str, prompts: list[str], n: int, max_tokens: int, batch_rows: int) -> dict:
    from prmforge.engines.hf import HFEngine

    engine = HFEngine(model_dir, device=device, batch_size=batch_rows)
    # warm-up (allocator, kernels) on a small slice for both
    run_engine(engine, prompts[:2], 2, 4)
    run_generate(engine, prompts[:2], 2, 4, batch_rows)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ours = run_engine(engine, prompts, n, max_tokens)
    if device == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = run_generate(engine, prompts, n, max_tokens, batch_rows)
    if device == "cuda":
        torch.cuda.synchronize()
    t_base = time.perf_counter() - t0
    r = {
        "device": device, "dtype": str(engine.dtype).replace("torch.", ""),
        "params": sum(p.numel() for p in engine.model.parameters()),
        "prompts": len(prompts), "n": n, "rows": len(prompts) * n, "batch_rows": batch_rows,
        "max_tokens": max_tokens,
        "engine_tokens": ours, "engine_s": round(t_ours, 3), "engine_tok_s": round(ours / t_ours, 1),
        "generate_tokens": base, "generate_s": round(t_base, 3), "generate_tok_s": round(base / t_base, 1),
    }
    r["ratio"] = round(r["engine_tok_s"] / r["generate_tok_s"], 2)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-rows", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--model", default=None, help="an existing HF folder instead of the tiny random Qwen2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from prmforge.engines.tiny import build_tiny_qwen2

    prompts = prompts_for(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(build_tiny_qwen2(tmp, hidden_size=args.hidden, layers=args.layers, heads=4,
                                                       kv_heads=4, intermediate_size=3 * args.hidden))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            r = bench(device, model_dir, prompts, args.n, args.max_tokens, args.batch_rows)
            print(f"[{device}/{r['dtype']}] {r['params']} params, {r['rows']} rows, max_tokens {r['max_tokens']}: "
                  f"HFEngine {r['engine_tok_s']:.0f} tok/s ({r['engine_tokens']} tok in {r['engine_s']}s) | "
                  f"model.generate {r['generate_tok_s']:.0f} tok/s ({r['generate_tokens']} tok in "
                  f"{r['generate_s']}s) | ratio {r['ratio']:.2f}x")
            print(json.dumps(r))


if __name__ == "__main__":
    main()
