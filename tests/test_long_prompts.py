"""Real GSM8K prompts longer than the policy's context: skipped with a reason, counted, never a silent empty row.

The rollouts stage keeps the prompts that fit (its blocking check passes), and MC, the judge and consensus
skip the others with a counted reason: rows in = rows labelled + rows counted as skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import AssetSpec, DagsterInstance, materialize

from assets.labels import consensus_labels, judge_step_labels, mc_step_labels
from assets.partitions import DATASETS_PARTITIONS_NAME, dataset_partitions
from assets.rollouts import policy_rollouts
from prmforge.prompts import INSTRUCT_TEMPLATE
from prmforge.schemas import SEED_PROBLEMS
from prmforge.storage import Storage
from resources import build_resources
from resources.engine import EngineResource
from resources.storage import StorageResource

PART = "gsm8k-long"
MAX_TOKENS = 16  # policy_rollouts.max_tokens (run config)
MC_TOKENS = 8  # mc_step_labels.max_tokens: a prompt that fits, its steps and an MC continuation fit too


def _seed(shared_data: Path, n: int) -> pa.Table:
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:n]
    rows = [{"problem_id": f"{PART}-{i:03d}", "dataset": PART, "problem": json.loads(line)["question"],
             "answer": json.loads(line)["answer"].rsplit("####", 1)[1].strip(), "split": "test", "source_row": i,
             "meta": None} for i, line in enumerate(lines)]
    return pa.Table.from_pylist(rows, schema=SEED_PROBLEMS)


@pytest.mark.slow
def test_long_real_prompts_are_skipped_and_counted(shared_data: Path, local_root: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from prmforge.engines.tiny import build_tiny_qwen2

    seed = _seed(shared_data, 10)
    probe = AutoTokenizer.from_pretrained(build_tiny_qwen2(tmp_path / "probe", layers=1))
    lengths = sorted(len(probe(INSTRUCT_TEMPLATE.replace("{problem}", p))["input_ids"])
                     for p in seed.column("problem").to_pylist())
    # about half the real prompts do not fit; none lies so close to the limit that a rollout fits and
    # its MC continuation (prompt + steps + MC_TOKENS) does not
    # (a random model's steps can re-tokenise longer than it generated them, a stray byte into up to three
    # tokens: four times MAX_TOKENS of room)
    k = next(i for i in range(len(lengths) // 2, len(lengths) - 1)
             if lengths[i + 1] - lengths[i] > 4 * MAX_TOKENS + MC_TOKENS)
    context = lengths[k] + 4 * MAX_TOKENS + MC_TOKENS
    too_long = sum(n + MAX_TOKENS > context for n in lengths)
    assert 0 < too_long < len(lengths)
    model = str(build_tiny_qwen2(tmp_path / "policy", layers=1, max_position_embeddings=context))

    store = Storage(local_root)
    store.write_dataset("seed_problems", seed, PART, schema=SEED_PROBLEMS)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, [PART])
    res = materialize(
        [AssetSpec("seed_problems", partitions_def=dataset_partitions), policy_rollouts, mc_step_labels,
         judge_step_labels, consensus_labels],
        partition_key=PART, instance=instance, raise_on_error=False,
        run_config={"ops": {"policy_rollouts": {"config": {"max_tokens": MAX_TOKENS}},
                            "mc_step_labels": {"config": {"max_tokens": MC_TOKENS}}}},
        resources=build_resources(storage=StorageResource(root=local_root),
                                  policy_engine=EngineResource(model=model, device="cpu", batch_size=32)))
    checks = {e.check_name: e for e in res.get_asset_check_evaluations()}
    steps_check = checks["steps_non_empty"]
    assert steps_check.passed, steps_check.metadata
    assert steps_check.metadata["skipped_prompts"].value == too_long
    message = steps_check.metadata["skipped"].value
    assert message.startswith(f"{too_long} prompts skipped ({2 * too_long} rollouts): prompt longer than the "
                              f"model's context (max {context:,} positions)"), message

    rollouts = store.read_dataset("policy_rollouts", PART).to_pylist()
    assert len(rollouts) == 2 * len(lengths)
    skipped = {r["rollout_id"] for r in rollouts if r["finish_reason"] == "skipped"}
    assert len(skipped) == 2 * too_long
    for r in rollouts:
        if r["rollout_id"] in skipped:
            assert r["steps"] == [] and r["error"] is None and f"prompt tokens + max_tokens {MAX_TOKENS}" in r["skip_reason"]
        else:
            assert r["skip_reason"] is None
    meta = {k: v.value for k, v in res.asset_materializations_for_node("policy_rollouts")[0].metadata.items()}
    assert meta["skipped_prompts"] == too_long and meta["skipped"] == message

    mc = store.read_dataset("mc_step_labels", PART).to_pylist()
    judge = store.read_dataset("judge_step_labels", PART).to_pylist()
    assert len(mc) == len(judge) == len(rollouts)  # one row per rollout, skipped ones with their status
    assert {r["rollout_id"] for r in mc if r["status"] == "skipped"} == skipped
    assert {r["rollout_id"] for r in judge if r["status"] == "skipped"} == skipped
    assert all(r["detail"].startswith("prompt longer than") for r in mc + judge if r["status"] == "skipped")
    mc_meta = {k: v.value for k, v in res.asset_materializations_for_node("mc_step_labels")[0].metadata.items()}
    assert mc_meta["status_counts"]["skipped"] == len(skipped)

    cons = {k: v.value for k, v in res.asset_materializations_for_node("consensus_labels")[0].metadata.items()}
    assert cons["disagreements"]["skipped_prompt"] == len(skipped)
    kept = store.read_dataset("consensus_labels", PART).num_rows
    assert kept + sum(cons["disagreements"].values()) == len(rollouts)

    # the console summary of the run shows the same counts per stage
    from pipelines.summary import summarize_runs

    rows = summarize_runs(instance, [res.run_id]).rows
    assert rows[("policy_rollouts", PART)]["skipped_prompts"] == too_long
    assert rows[("mc_step_labels", PART)]["skipped"] == len(skipped)
    assert rows[("mc_step_labels", PART)]["rollouts"] == len(rollouts)
