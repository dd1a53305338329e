"""Hard vs soft labels: train the profile's PRM on one run's labels with ``label_kind`` hard or soft, print F1 and BoN.

Why a script beside the pipeline: both variants must see the same labels,
benchmark, Best-of-N candidates and seeds, and nothing of the run may change
(nothing is registered; the run's storage is only read). It is the code the
assets run: ``prmforge.labeling`` builds the consensus rows (with soft labels),
``prmforge.prm.pipeline.fit`` / ``evaluate`` train and score with the profile's
``prm_model`` / ``prm_evaluation`` settings plus ``label_kind``.

    .venv/bin/python benchmarks/bench_soft_labels.py --home /tmp/worldrun --label-kind soft \\
        --policy /tmp/worldrun/storage/models/policy/<policy> --base /tmp/worldrun/storage/models/policy/<sibling>

A run labelled before soft labels existed (no ``step_values`` in
``mc_step_labels``) gets them derived here from its probes, exactly as
``label_mc`` derives them (K per probe = the configured K there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def consensus_rows(datasets: Path, policy: str) -> tuple[list[dict], dict]:
    """Consensus rows of every partition (soft labels included) and soft-label statistics."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prmforge.labeling.consensus import build_consensus
    from prmforge.labeling.soft import model_content_hash, with_mc_soft_columns
    from prmforge.labeling.stages import MC_SCHEMA

    rows: list[dict] = []
    for part in sorted(p.name for p in (datasets / "consensus_labels").iterdir()):
        mc = pq.read_table(datasets / "mc_step_labels" / part / "data.parquet")
        judge = pq.read_table(datasets / "judge_step_labels" / part / "data.parquet")
        if "step_values" not in mc.column_names:
            rollouts = pq.read_table(datasets / "policy_rollouts" / part / "data.parquet").to_pylist()
            shard = mc.append_column("probe_k", pa.array([None] * mc.num_rows, pa.list_(pa.int64())))
            prov = {"seed": 0, "engine": "hf", "model": policy, "model_hash": model_content_hash(policy)}
            mc = with_mc_soft_columns(shard, rollouts, prov, MC_SCHEMA)
        names = ",".join(sorted(set(judge.column("judge").to_pylist())))
        rows += build_consensus(mc, judge, names).table.to_pylist()
    steps = [(h, s) for r in rows for h, s in zip(r["labels"], r["soft_labels"], strict=True)]
    stats = {"rows": len(rows), "steps": len(steps),
             "soft_differs_share": round(sum(float(h) != s for h, s in steps) / max(len(steps), 1), 4),
             "mean_soft_on_right_steps": round(sum(s for h, s in steps if h) / max(sum(h for h, _ in steps), 1), 4)}
    return rows, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="PRMFORGE_HOME of a run whose labels are done (local storage)")
    ap.add_argument("--policy", required=True, help="policy folder (Best-of-N candidates)")
    ap.add_argument("--base", required=True, help="PRM base model folder (the run's prm_base_model)")
    ap.add_argument("--label-kind", choices=["hard", "soft"], required=True)
    ap.add_argument("--profile", default="world")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="test-artifacts/bench_soft_labels")
    args = ap.parse_args()

    import torch

    from prmforge.engines.factory import EngineConfig
    from prmforge.prm.pipeline import evaluate, fit
    from prmforge.profiles import stage_settings
    from prmforge.storage import Storage

    torch.set_num_threads(args.threads)
    storage = Path(args.home) / "storage"
    rows, stats = consensus_rows(storage / "datasets", args.policy)
    train = stage_settings("prm_model", args.profile, label_kind=args.label_kind)
    t0 = time.time()
    res = fit(rows, train, args.base)
    train_s = time.time() - t0
    bench = Storage(f"file://{storage}").read_dataset("world_benchmark")
    engine = EngineConfig(model=args.policy, device="cpu", num_threads=args.threads)
    rep = evaluate(res.model, res.tokenizer, stage_settings("prm_evaluation", args.profile),
                   Path(args.out) / args.label_kind, bench, policy_engine=engine)
    m = rep.flat_metrics()
    print(json.dumps({"label_kind": args.label_kind, "profile": args.profile, "labels": stats,
                      "train_steps": res.train.steps, "final_loss": round(res.train.final_loss, 4),
                      "train_s": round(train_s), "eval_s": round(time.time() - t0 - train_s),
                      **{k: round(v, 4) for k, v in m.items()
                         if k.startswith(("world_", "bon8_", "threshold", "step_ece"))}}))


if __name__ == "__main__":
    main()
