"""The Dagster code location: definitions, jobs, schedules, sensors, automation."""

from __future__ import annotations

from typing import Any


def automation_defs() -> dict[str, Any]:
    """Jobs, schedules and sensors (filled in by ``pipelines.jobs`` etc. as they land)."""
    out: dict[str, Any] = {"jobs": [], "schedules": [], "sensors": []}
    try:
        from pipelines.jobs import JOBS

        out["jobs"] = JOBS
    except ImportError:
        pass
    try:
        from pipelines.schedules import SCHEDULES

        out["schedules"] = SCHEDULES
    except ImportError:
        pass
    try:
        from pipelines.sensors import SENSORS

        out["sensors"] = SENSORS
    except ImportError:
        pass
    return out
