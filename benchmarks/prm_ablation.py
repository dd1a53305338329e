"""Train a PRM variant on a finished run's consensus labels and print world F1 and Best-of-8.

Why: the PRM design choices in docs/prm.md (surprisal features, backbone learning
rate, the base model) were decided by running this on one set of labels, so every
variant sees the same data, benchmark and Best-of-N candidates. Nothing is
registered; the run's own storage is only read.

    .venv/bin/python benchmarks/prm_ablation.py --home /tmp/worldrun \
        --settings '{"backbone_lr_ratio": 0.1}' [--base /path/to/model] [--surprisal-only]

``--base`` defaults to the run's policy (``models/policy/<hash>`` of the
``world_benchmark``'s policy); ``--surprisal-only`` scores steps by the base LM's
minimum token probability with no training (the baseline the features start from).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="PRMFORGE_HOME of a finished run (local storage)")
    ap.add_argument("--policy", help="policy folder for Best-of-N sampling (default: the only policy of the run)")
    ap.add_argument("--base", help="PRM base model (default: the policy)")
    ap.add_argument("--settings", default="{}", help="PRMTrainSettings overrides as JSON")
    ap.add_argument("--bon-problems", type=int, default=200)
    ap.add_argument("--surprisal-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import torch

    from prmforge.engines.factory import EngineConfig
    from prmforge.prm.pipeline import evaluate, fit
    from prmforge.prm.settings import PRMEvalSettings, PRMTrainSettings
    from prmforge.prompts import policy_prompt

    torch.set_num_threads(args.threads)
    storage = Path(args.home) / "storage"
    policy = args.policy or str(sorted((storage / "models" / "policy").iterdir())[0])
    base = args.base or policy
    bench = pq.read_table(storage / "datasets" / "world_benchmark" / "data.parquet")
    if args.surprisal_only:
        print(json.dumps(surprisal_baseline(base, bench.to_pylist())))
        return
    rows = []
    for part in sorted((storage / "datasets" / "consensus_labels").iterdir()):
        rows += pq.read_table(part / "data.parquet").to_pylist()
    over = json.loads(args.settings)
    s = PRMTrainSettings(**{"epochs": 3.0, "max_steps": None, "micro_batch_size": 32, **over})
    t0 = time.time()
    res = fit(rows, s, base)
    train_s = time.time() - t0
    rep = evaluate(res.model, res.tokenizer, PRMEvalSettings(bon_n=8, bon_problems=args.bon_problems,
                                                             max_samples_per_subset=None),
                   Path("test-artifacts") / "prm_ablation", bench,
                   policy_engine=EngineConfig(backend="hf", model=policy, num_threads=args.threads),
                   policy_prompt=policy_prompt(policy, "world"))
    m = rep.flat_metrics()
    print(json.dumps({"settings": over, "base": base, "rows": len(rows), "train_s": round(train_s),
                      **{k: round(v, 3) for k, v in m.items() if k.startswith(("world_", "bon8_", "threshold"))}}))


def surprisal_baseline(base: str, rows: list[dict]) -> dict:
    """Step score = the base LM's minimum token probability over the step; same split and threshold protocol."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prmforge.model_files import local_model
    from prmforge.prm.metrics import Sample, choose_threshold, processbench_report, split_calibration
    from prmforge.prm.model import format_prompt

    path, local_only = local_model(base)  # the project's resolver: storage URIs, one cache, safetensors only
    tok = AutoTokenizer.from_pretrained(path, **local_only)
    lm = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **local_only).eval()
    samples = []
    for x in rows:
        ids = tok(format_prompt(x["problem"], "world", tok), add_special_tokens=False)["input_ids"]
        spans = []
        for step in x["steps"]:
            s_ids = tok(step + "\n", add_special_tokens=False)["input_ids"]
            spans.append((len(ids), len(ids) + len(s_ids) - 1))
            ids += s_ids
        with torch.no_grad():
            lp = torch.log_softmax(lm(torch.tensor([ids])).logits[0].float(), -1)
        scores = [math.exp(min(float(lp[t - 1, ids[t]]) for t in range(a, b))) if b > a else 1.0 for a, b in spans]
        samples.append(Sample(x["id"], "world", x["steps"], x["label"], x["final_answer_correct"], scores,
                              x["problem_id"], x["problem"]))
    calib, test = split_calibration(samples, 0.3, 0)
    threshold = choose_threshold(calib)
    return {"threshold": threshold, **processbench_report(test, threshold)["world"]}


if __name__ == "__main__":
    main()
