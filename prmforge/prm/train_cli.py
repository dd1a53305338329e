"""Command line of the PRM trainer: train from a labels Parquet file, alone or under ``torchrun``.

A module of its own (not ``prmforge.prm.train``) because it drives
``prmforge.prm.pipeline.fit``, which imports the trainer: keeping the entry
point here keeps the imports one-way (pipeline -> train).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence

import pyarrow.parquet as pq

from prmforge.distributed.torchrun import LOG_PREFIX, RESULT_PREFIX, STEP_PREFIX
from prmforge.prm.export import save_prm
from prmforge.prm.pipeline import fit
from prmforge.prm.settings import PRMTrainSettings
from prmforge.prm.train import dist_info
from prmforge.storage import Storage


def main(argv: Sequence[str] | None = None) -> int:
    """Train a PRM from a labels Parquet file; works alone or under ``torchrun``.

    ``torchrun --nproc_per_node 2 -m prmforge.prm.train_cli --labels L.parquet --base-model M --out DIR``
    """
    ap = argparse.ArgumentParser(prog="python -m prmforge.prm.train_cli", description=main.__doc__)
    ap.add_argument("--labels", required=True, help="consensus_labels Parquet (local path)")
    ap.add_argument("--base-model", required=True, help="hub id, local folder or s3:// / file:// URI")
    ap.add_argument("--out", required=True, help="local folder for the trained PRM")
    ap.add_argument("--settings", default="{}", help="JSON overrides of PRMTrainSettings")
    ap.add_argument("--checkpoint-root", default=None, help="storage root for resumable checkpoints")
    ap.add_argument("--data-version", default=None, help="data version of the labels (part of the checkpoint "
                    "run key; the asset passes its own so a launched run resumes the asset's checkpoints)")
    ap.add_argument("--progress", action="store_true", help="rank 0 prints one PRMFORGE_STEP JSON line per "
                    "optimizer step and a final PRMFORGE_RESULT line (read by prmforge.distributed.torchrun)")
    args = ap.parse_args(argv)
    settings = PRMTrainSettings(**json.loads(args.settings))
    rows = pq.read_table(args.labels).to_pylist()
    storage = Storage(args.checkpoint_root) if args.checkpoint_root else None
    rank, world = dist_info()

    def progress(metrics: dict[str, float], step: int) -> None:
        print(STEP_PREFIX + json.dumps({"step": step, "metrics": metrics}), flush=True)

    def log(line: str) -> None:
        print(LOG_PREFIX + line, flush=True)

    report = args.progress and rank == 0
    result = fit(rows, settings, args.base_model, storage=storage, data_version=args.data_version or args.labels,
                 log_fn=progress if report else None, log=log if report else None)
    if rank == 0:
        save_prm(result.model, result.tokenizer, args.out)
        print(json.dumps({"world_size": world, "steps": result.train.steps, "final_loss": result.train.final_loss,
                          "tokens_per_s": result.train.tokens_per_s, "out": args.out}))
        if args.progress:
            train = {k: v for k, v in dataclasses.asdict(result.train).items() if k != "history"}
            print(RESULT_PREFIX + json.dumps({"stats": dataclasses.asdict(result.stats), "train": train,
                                              "run_key": result.run_key, "world_size": world}), flush=True)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
