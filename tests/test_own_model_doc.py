"""The run config in docs/own-model-and-data.md is valid for the full pipeline job (the doc cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from dagster import validate_run_config

from pipelines.definitions import defs
from pipelines.jobs import FULL_PIPELINE_JOB

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-model-and-data.md"


def test_documented_run_config_validates() -> None:
    merged: dict[str, dict] = {"resources": {}, "ops": {}}
    for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S):
        for kind, entries in yaml.safe_load(block).items():
            for name, value in entries.items():
                merged[kind].setdefault(name, {"config": {}})["config"].update(value["config"])
    assert set(merged["ops"]) == {"policy_rollouts", "mc_step_labels", "judge_step_labels", "prm_model",
                                  "prm_evaluation", "registered_prm"}
    assert set(merged["resources"]) == {"policy_engine", "judge"}
    validate_run_config(defs.resolve_job_def(FULL_PIPELINE_JOB), merged)
