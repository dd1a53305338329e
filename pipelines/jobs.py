"""Asset jobs: the whole graph, and one job per stage (asset group).

Selections are by asset group (``AssetSelection.groups``), so a stage's job
follows whatever assets its module defines. Launch any of them from the UI
(Launchpad or the asset graph), or from the CLI (``prmforge run`` /
``prmforge backfill``); a job over the ``datasets`` partitions runs one
dataset per run, and a backfill fans out over several.
"""

from __future__ import annotations

from dagster import define_asset_job

from pipelines.automation import STAGE_GROUPS, stage_selection

FULL_PIPELINE_JOB = "full_pipeline"


def stage_job_name(stage: str) -> str:
    """``seed`` -> ``seed_job``."""
    return f"{stage}_job"


full_pipeline = define_asset_job(
    FULL_PIPELINE_JOB,
    selection=stage_selection(),
    description="Every stage: seed problems to a registered PRM. Partitioned stages run for the run's dataset.",
    tags={"prmforge/job": "full"},
)

STAGE_JOBS = {
    stage: define_asset_job(
        stage_job_name(stage),
        selection=stage_selection(stage),
        description=f"Stage '{stage}': the assets of group '{stage}'.",
        tags={"prmforge/stage": stage},
    )
    for stage in STAGE_GROUPS
}

seed_job = STAGE_JOBS["seed"]

JOBS = [full_pipeline, *STAGE_JOBS.values()]
