"""20 real GSM8K test rows dropped under incoming/: every row accounted for at every stage.

The user drops the first 20 rows of the real GSM8K test file (``../shared/data``), plus a copy of
the first row and a row with no final answer, with a ``_dataset.yaml`` saying "gsm8k, test". The
new-dataset sensor (the code the daemon runs) registers the dataset and ingests it; the label
stages then run on it with the embedded policy (tiny profile, n=2, K=2, short budgets). At each
stage: rows in = rows out + rows counted apart (quarantined, deduplicated, decontaminated, prompts
skipped with their reason), read both from the stored tables and from the run summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from test_e2e_incoming import DaemonPlayer, empty_location

from pipelines.summary import summarize_runs

pytestmark = pytest.mark.slow
PART = "gsm8k-real-20"
LABEL_STAGES = ("policy_rollouts", "mc_step_labels", "judge_step_labels", "consensus_labels")
RUN_CONFIG = {"ops": {"policy_rollouts": {"config": {"max_problems": 100, "max_tokens": 48}},
                      "mc_step_labels": {"config": {"max_tokens": 32}}}}


def test_real_gsm8k_rows_dropped_in_incoming_are_accounted_for(shared_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    defs, storage = empty_location(tmp_path, monkeypatch)
    real = (shared_data / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    no_answer = json.dumps({"question": "Ann has 3 pens and buys 2 more. How many pens?", "answer": "She has 5."})
    lines = [*real, real[0], no_answer]  # 22 rows in: 20 real, a duplicate, one without a final answer
    storage.write_bytes_atomic(storage.path("incoming", PART, "_dataset.yaml"), b"split: test\nadapter: gsm8k\n")
    storage.write_bytes_atomic(storage.path("incoming", PART, "part-1.jsonl"), ("\n".join(lines) + "\n").encode())

    with dg.instance_for_test() as instance:
        player = DaemonPlayer(defs, instance)
        assert player.sensor_tick() == 1  # the sensor registers the dataset and ingests it
        job = player.job
        policy = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("policy_model")],
                                        raise_on_error=False)
        labels = job.execute_in_process(instance=instance, partition_key=PART, run_config=RUN_CONFIG,
                                        asset_selection=[dg.AssetKey(a) for a in LABEL_STAGES], raise_on_error=False)
        assert policy.success and labels.success and all(r[3] for r in player.runs)
        s = summarize_runs(instance, [r.run_id for r in instance.get_runs()])

    # seed_problems: 22 read = 20 accepted + 1 quarantined (no final answer) + 1 duplicate
    seed = storage.read_dataset("seed_problems", PART).to_pylist()
    quarantined = storage.read_dataset("seed_problems_quarantine", PART).to_pylist()
    dropped = storage.read_dataset("seed_problems_dropped", PART).to_pylist()
    assert len(seed) == 20 and {r["split"] for r in seed} == {"test"}
    assert len(quarantined) == 1 and quarantined[0]["reason"] == "unparseable_answer" and quarantined[0]["source_row"] == 21
    assert [(d["kind"], d["source_row"]) for d in dropped] == [("duplicate", 20)]
    counts = s.rows[("seed_problems", PART)]
    assert counts["rows_read"] == len(lines) == (counts["accepted"] + counts["quarantined"] + counts["deduplicated"]
                                                 + counts["decontaminated"])
    assert (counts["accepted"], counts["quarantined"], counts["deduplicated"]) == (20, 1, 1)

    # policy_rollouts: n=2 per accepted problem; a skipped prompt carries its reason, a run one its steps
    rollouts = storage.read_dataset("policy_rollouts", PART).to_pylist()
    assert len(rollouts) == 2 * len(seed)
    assert {r["problem_id"] for r in rollouts} == {r["problem_id"] for r in seed}
    skipped = {r["rollout_id"] for r in rollouts if r["finish_reason"] == "skipped"}
    assert all(r["skip_reason"] for r in rollouts if r["rollout_id"] in skipped)
    assert all(r["skip_reason"] is None and r["text"] for r in rollouts if r["rollout_id"] not in skipped)
    assert all(r["prompt"].startswith("Problem: ") for r in rollouts)  # the embedded policy's world prompt
    assert s.rows[("policy_rollouts", PART)]["rollouts"] == len(rollouts)
    assert s.rows[("policy_rollouts", PART)]["skipped_prompts"] == len({i.split("#")[0] for i in skipped})

    # MC and the judge: one row per rollout; the skipped ones labelled "skipped" with the reason
    for stage in ("mc_step_labels", "judge_step_labels"):
        rows = storage.read_dataset(stage, PART).to_pylist()
        assert sorted(r["rollout_id"] for r in rows) == sorted(r["rollout_id"] for r in rollouts), stage
        assert {r["rollout_id"] for r in rows if r["status"] == "skipped"} == skipped, stage
    mc = s.rows[("mc_step_labels", PART)]
    assert mc["rollouts"] == len(rollouts) == mc["labelled"] + mc["skipped"] + mc["failed"]
    assert s.rows[("judge_step_labels", PART)]["rows"] == len(rollouts)

    # consensus: every rollout kept or counted under a reason
    kept = storage.read_dataset("consensus_labels", PART).num_rows
    cons = _metadata(labels, "consensus_labels")
    assert kept + sum(cons["disagreements"].values()) == len(rollouts)
    assert cons["disagreements"].get("skipped_prompt", 0) == len(skipped)
    assert s.rows[("consensus_labels", PART)]["rollouts"] == len(rollouts)


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The plain metadata values of ``asset``'s materialisation in ``result``."""
    event = next(m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey(asset))
    return {k: v.value for k, v in event.materialization.metadata.items()}
