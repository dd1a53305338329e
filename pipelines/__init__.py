"""The Dagster code location: definitions, jobs, schedules, sensors, automation."""

from __future__ import annotations

from typing import Any


def automation_defs() -> dict[str, Any]:
    """Jobs, schedules and sensors of the code location."""
    from pipelines.jobs import JOBS
    from pipelines.schedules import SCHEDULES
    from pipelines.sensors import SENSORS

    return {"jobs": JOBS, "schedules": SCHEDULES, "sensors": SENSORS}
