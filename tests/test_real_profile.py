"""The `real` profile: real GSM8K text through every stage with the embedded policy, every count reported.

Runs ``prmforge run --profile real`` on the bundled GSM8K test sample (12 real problems) beside a
small world partition, as a user would, then reads the end-of-run summary from the instance: rows
in and out of every stage (rows in = rows out + rows counted as skipped or dropped), steps per
solution, unscored steps and the time each stage took. The embedded policy is a world policy: on
GSM8K it runs past max_tokens (the truncation WARN) and MC and the calculator rarely agree on its
rollouts (the kept-share WARN), so the PRM learns from the world partition's labels.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from pipelines import cli
from pipelines.summary import summarize_runs

pytestmark = pytest.mark.slow
PART = "gsm8k-test-sample"


def test_real_profile_on_real_gsm8k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_home: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "datasets.yaml"
    registry.write_text(f"datasets:\n  {PART}: {{source: 'bundled:gsm8k_test_sample.jsonl', format: jsonl, "
                        "adapter: gsm8k, split: test}\n  world-small: {source: world, adapter: world}\n",
                        encoding="utf-8")
    monkeypatch.setenv("PRMFORGE_REGISTRY", str(registry))
    home = _isolated_home / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PRMFORGE_MAX_RETRIES", "0")

    rc = cli.main(["run", "--profile", "real", "--partitions", f"{PART},world-small"])
    out = capsys.readouterr().out
    assert rc == 0, out

    with dg.DagsterInstance.get() as instance:
        runs = [r.run_id for r in instance.get_runs()]
        s = summarize_runs(instance, runs)
    assert not s.failed_steps, s.failed_steps
    # only WARN checks may fail (see the module docstring); blocking ones would have stopped the run
    assert {c.split(": ", 1)[0].split(" ")[-1] for c in s.failed_checks} <= {"truncation_rate",
                                                                            "kept_share_in_bounds"}
    rollouts = s.rows[("policy_rollouts", PART)]
    assert rollouts["problems"] == 12 and rollouts["rollouts"] == 24  # n=2, every real problem
    assert rollouts["skipped_prompts"] == 0  # 2,048 positions fit every prompt + max_tokens
    assert rollouts["steps_per_solution"] > 1
    mc = s.rows[("mc_step_labels", PART)]
    assert mc["rollouts"] == 24 and mc["labelled"] + mc["skipped"] + mc["failed"] == 24
    assert s.rows[("judge_step_labels", PART)]["rows"] == 24
    cons = s.rows[("consensus_labels", PART)]
    assert cons["rollouts"] == 24 and 0 <= cons["kept"] <= 24
    assert s.evaluation["steps_unscored"] == 0 and "world_f1" in s.evaluation
    for stage in ("policy_model", "policy_rollouts", "mc_step_labels", "judge_step_labels", "consensus_labels",
                  "prm_model", "prm_evaluation", "registered_prm"):
        assert s.seconds.get(stage, 0) > 0, (stage, s.seconds)
    lines = "\n".join(s.lines())
    assert f"policy_rollouts[{PART}]: problems 12, rollouts 24, skipped_prompts 0, steps_per_solution" in lines
    assert "time per stage: " in lines
