"""Subprocess entry points the crash tests ``kill -9``: MC labelling and PRM training.

Rollouts have their own CLI (``python -m prmforge.rollouts_cli``). MC labelling
is run here as the real Dagster asset ``mc_step_labels`` (its sharded,
resumable code path), and training through ``prmforge.prm.pipeline.fit`` (the
function the ``prm_model`` asset calls, with its storage checkpoints). Each
prints one JSON line with its summary as the last line of stdout.

    python tests/reliability/stage_runner.py mc --root R --partition P --model M --settings JSON
    python tests/reliability/stage_runner.py train --root R --rows FILE --base M --settings JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def run_mc(args: argparse.Namespace) -> dict:
    from dagster import DagsterInstance, SourceAsset, materialize

    from assets.labels import mc_step_labels
    from assets.partitions import dataset_partitions
    from resources import build_resources
    from resources.engine import EngineResource
    from resources.storage import StorageResource

    resources = build_resources(storage=StorageResource(root=args.root),
                                policy_engine=EngineResource(model=args.model, device="cpu", batch_size=64))
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("datasets", [args.partition])
        rollouts = SourceAsset("policy_rollouts", partitions_def=dataset_partitions)  # read from storage
        res = materialize([rollouts, mc_step_labels], selection=[mc_step_labels],
                          partition_key=args.partition, instance=instance, resources=resources,
                          run_config={"ops": {"mc_step_labels": {"config": json.loads(args.settings)}}})
        mat = res.asset_materializations_for_node("mc_step_labels")[0]
        meta = {k: v.value for k, v in mat.metadata.items()}
    return {k: meta[k] for k in ("shards_total", "shards_reused", "shards_computed", "run_key", "rollouts")}


def run_train(args: argparse.Namespace) -> dict:
    import tempfile

    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(1)
    from prmforge.prm.pipeline import fit
    from prmforge.prm.settings import PRMTrainSettings
    from prmforge.storage import Storage

    rows = pq.read_table(args.rows).to_pylist()
    s = PRMTrainSettings(**json.loads(args.settings))
    storage = Storage(args.root)
    result = fit(rows, s, args.base, storage=storage, data_version="reliability")
    with tempfile.TemporaryDirectory() as tmp:
        folder = result.model.save(Path(tmp) / "prm", result.tokenizer)
        uri = storage.put_dir(folder, "models", "prm", result.run_key)
    return {"resumed_from": result.train.resumed_from, "steps": result.train.steps, "run_key": result.run_key,
            "uri": uri}


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    mc = sub.add_parser("mc")
    mc.add_argument("--root", required=True)
    mc.add_argument("--partition", required=True)
    mc.add_argument("--model", required=True)
    mc.add_argument("--settings", default="{}")
    tr = sub.add_parser("train")
    tr.add_argument("--root", required=True)
    tr.add_argument("--rows", required=True)
    tr.add_argument("--base", required=True)
    tr.add_argument("--settings", default="{}")
    args = ap.parse_args()
    out = run_mc(args) if args.cmd == "mc" else run_train(args)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
