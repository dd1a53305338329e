"""Schedule that refreshes dataset sources which can change upstream.

A registry entry whose source is a dataset-hub id or an object-store prefix
(``s3://.../``, a folder) can gain rows without prmforge noticing, unlike a
single local file (the new-dataset sensor already watches ``incoming/``).
``refresh_sources_schedule`` re-ingests those partitions on a cron
(``PRMFORGE_REFRESH_CRON``, default daily at 03:00 UTC). Ingestion writes a
content-hash data version, so an unchanged source triggers nothing
downstream; a changed one flows through rollouts, labels and retraining by
the automation conditions.
"""

from __future__ import annotations

import os

from dagster import RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from assets.partitions import DATASETS_PARTITIONS_NAME
from pipelines.jobs import seed_job
from prmforge import env
from prmforge.registry import DatasetSpec, load_registry

_GLOB_CHARS = set("*?[")


def source_can_change(spec: DatasetSpec) -> bool:
    """Hub ids, object-store URLs, folders and globs can gain rows; a single
    local file, a bundled file and the seeded world generator cannot, and
    ``incoming`` folders are watched by the new-dataset sensor instead."""
    if spec.kind == "hub":
        return True
    if spec.kind != "path":
        return False
    src = spec.source
    if src.startswith(("s3://", "s3a://")) or _GLOB_CHARS & set(src) or src.endswith("/"):
        return True
    local = src[len("file://"):] if src.startswith("file://") else src
    return os.path.isdir(local)


def mutable_source_keys() -> list[str]:
    """Registry keys whose source can change, sorted."""
    return sorted(k for k, spec in load_registry().items() if source_can_change(spec))


def refresh_cron() -> str:
    """``PRMFORGE_REFRESH_CRON`` or daily at 03:00."""
    return env.refresh_cron()


@schedule(
    name="refresh_sources_schedule",
    cron_schedule=refresh_cron(),
    job=seed_job,
    execution_timezone="UTC",
    description="Re-ingest registry datasets whose source can change (hub ids, s3 prefixes, folders).",
)
def refresh_sources_schedule(context: ScheduleEvaluationContext):
    """One ingestion run per registered, changeable dataset.

    The run key includes the scheduled time, so each cron tick asks once per
    dataset and a retried tick does not launch duplicates. Datasets not yet
    added as partitions are left to the new-dataset sensor.
    """
    keys = mutable_source_keys()
    known = set(context.instance.get_dynamic_partitions(DATASETS_PARTITIONS_NAME))
    wanted = [k for k in keys if k in known]
    if not wanted:
        return SkipReason(f"no registered partition has a changeable source (candidates: {keys})")
    stamp = context.scheduled_execution_time.strftime("%Y%m%dT%H%M") if context.scheduled_execution_time else "now"
    return [
        RunRequest(
            run_key=f"refresh-{key}-{stamp}",
            partition_key=key,
            tags={"prmforge/trigger": "refresh_schedule"},
        )
        for key in wanted
    ]


SCHEDULES = [refresh_sources_schedule]
