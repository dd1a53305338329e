"""Asset jobs: the whole graph, and one job per stage.

Selections are by asset *name* through ``pipelines.automation.stage_selection``
(``key:"..."`` strings), which match nothing rather than fail when a stage
module does not define an asset yet. Launch any of them from the UI
(Launchpad or the asset graph), or from the CLI (``prmforge run`` /
``prmforge backfill``); a job over the ``datasets`` partitions runs one
dataset per run, and a backfill fans out over several.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import define_asset_job

if TYPE_CHECKING:  # the class is not exported at dagster's top level
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from pipelines.automation import STAGES, all_stage_assets, stage_selection

FULL_PIPELINE_JOB = "full_pipeline"


def stage_job_name(stage: str) -> str:
    """``seed`` -> ``seed_job``."""
    return f"{stage}_job"


full_pipeline = define_asset_job(
    FULL_PIPELINE_JOB,
    selection=stage_selection(all_stage_assets()),
    description="Every stage: seed problems to a registered PRM. Partitioned stages run for the run's dataset.",
    tags={"prmforge/job": "full"},
)

STAGE_JOBS: dict[str, UnresolvedAssetJobDefinition] = {
    stage: define_asset_job(
        stage_job_name(stage),
        selection=stage_selection(names),
        description=f"Stage '{stage}': {', '.join(names)}.",
        tags={"prmforge/stage": stage},
    )
    for stage, names in STAGES.items()
}

seed_job = STAGE_JOBS["seed"]

JOBS: list[UnresolvedAssetJobDefinition] = [full_pipeline, *STAGE_JOBS.values()]
