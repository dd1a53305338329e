"""PRM training throughput: tokens/s (and model FLOPs utilisation on CUDA) vs a same-run baseline.

Usage::

    .venv/bin/python benchmarks/bench_training.py                 # CPU: batch 1 vs batch 32
    .venv/bin/python benchmarks/bench_training.py --hidden 512 --layers 8 --steps 30   # CUDA: + fp32 vs bf16

The model is a random Llama of the bootstrap policy's shape (configurable) with the
PRM head; the data are world problems with oracle-style labels, formatted exactly
as ``prm_model`` formats them. Both configurations run in the same process on the
same data, so the printed ratio is meaningful even on a shared machine (the
absolute figures are not: note the CPU load when you record them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# Dense bf16 peak FLOP/s per device, for MFU (H100/H200 SXM: 989 TFLOP/s).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run(model_dir: str, rows: list[dict], micro: int, bf16: bool, steps: int, max_length: int) -> dict:
    from prmforge.prm.data import encode_dataset
    from prmforge.prm.model import build_prm
    from prmforge.prm.settings import PRMTrainSettings
    from prmforge.prm.train import train_prm

    model, tok = build_prm(model_dir, max_length=max_length, seed=0)
    examples, _ = encode_dataset(tok, rows, model.config.step_token_id, max_length)
    params = sum(p.numel() for p in model.parameters())
    cfg = PRMTrainSettings(max_steps=steps + 2, micro_batch_size=micro, bf16=bf16, checkpoint_every=10**9)
    res = train_prm(model, examples, cfg, tok.pad_token_id)
    timed = res.history[2:]  # skip warm-up steps (allocator, kernels)
    tokens = sum(h["tokens"] for h in timed)
    seconds = sum(h["tokens"] / h["tokens_per_s"] for h in timed)
    tps = tokens / seconds
    out = {"micro_batch": micro, "bf16": bf16 and torch.cuda.is_available(), "tokens_per_s": round(tps, 1),
           "params": params}
    peak = peak_flops()
    if peak:
        out["mfu"] = round(6 * params * tps / peak, 5)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from prm_helpers import world_rows

    from prmforge.prm.tiny import build_tiny_backbone
    from prmforge.world import generate_problems

    rows, _ = world_rows(args.rows, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        texts = [p.problem + "\n" + "\n".join(p.steps) for p in generate_problems(300, 0, "easy")]
        build_tiny_backbone(Path(tmp) / "m", texts, hidden_size=args.hidden, layers=args.layers,
                            heads=max(1, args.hidden // 64), vocab_size=768)
        m = str(Path(tmp) / "m")
        results = {"baseline_batch1_fp32": run(m, rows, 1, False, args.steps, args.max_length),
                   f"batch{args.batch}_fp32": run(m, rows, args.batch, False, args.steps, args.max_length)}
        if torch.cuda.is_available():
            results[f"batch{args.batch}_bf16"] = run(m, rows, args.batch, True, args.steps, args.max_length)
    base = results["baseline_batch1_fp32"]["tokens_per_s"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({args.threads} threads)"
    print(f"device: {device}; load average {os.getloadavg()[0]:.2f} (CPU shared with other work if > threads)")
    print(f"{'config':28s} {'tokens/s':>12s} {'vs baseline':>12s} {'MFU':>8s}")
    for name, r in results.items():
        mfu = f"{r['mfu']:.2%}" if "mfu" in r else "n/a"
        print(f"{name:28s} {r['tokens_per_s']:12.1f} {r['tokens_per_s'] / base:11.2f}x {mfu:>8s}")
    print(json.dumps({"device": device, "args": vars(args), "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
