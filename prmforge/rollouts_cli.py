"""Run rollout generation outside Dagster (same code as the asset).

    python -m prmforge.rollouts_cli --root file:///data/store --partition world-demo \\
        --model /models/policy [--backend hf] [--settings '{"n": 4}'] [--bootstrap]

Reads ``seed_problems/<partition>`` from the storage root, writes shards under
``shards/policy_rollouts/<partition>/<run_key>/`` and the final table to
``datasets/policy_rollouts/<partition>/data.parquet``, then prints one JSON
line with the run summary. Being a plain process, it is what the
kill-and-resume tests ``kill -9`` at arbitrary points.
"""

from __future__ import annotations

import argparse
import json
import sys

from prmforge.engines.factory import EngineConfig, make_engine
from prmforge.profiles import stage_settings
from prmforge.prompts import policy_prompt
from prmforge.rollouts import DATASET, generate_rollouts
from prmforge.storage import Storage


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="storage root (file:// or s3://)")
    ap.add_argument("--partition", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--engine", default="{}", help="JSON of EngineConfig fields (backend, device, batch_size...)")
    ap.add_argument("--settings", default="{}", help="JSON overrides of RolloutSettings")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--bootstrap", action="store_true", help="the model is the bootstrap policy (world prompt)")
    args = ap.parse_args(argv)

    storage = Storage(args.root)
    settings = stage_settings("policy_rollouts", args.profile, **json.loads(args.settings))
    cfg = EngineConfig(**{**json.loads(args.engine), "model": args.model})
    problems = storage.read_dataset("seed_problems", args.partition)
    prompt = policy_prompt(args.model, settings.prompt_template, args.bootstrap, settings.chat_template,
                           cfg.trust_remote_code)
    run = generate_rollouts(storage, args.partition, problems, settings, cfg.identity(),
                            lambda: make_engine(cfg), args.bootstrap, prompt=prompt)
    url = storage.write_dataset(DATASET, run.table, args.partition)
    print(json.dumps({"url": url, "run_key": run.run_key, "rows": run.table.num_rows,
                      "shards_total": run.shards_total, "shards_reused": run.shards_reused,
                      "shards_computed": run.shards_computed, "tokens_per_s": round(run.tokens_per_s, 1),
                      **{k: v for k, v in run.stats.items() if k != "finish_reasons"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
