"""The Dagster code location: definitions, jobs, schedules, sensors, automation.

Importing it quiets what would flood the console, the webserver and the
daemon log of every process that loads the code location: Dagster's
preview/beta notices (the pipeline uses partitioned asset checks and
``data_version`` on purpose; one notice per decorator per process was over
a hundred lines in ten minutes of UI use) and library progress bars.
"""

from __future__ import annotations

import warnings
from typing import Any

from dagster import BetaWarning, PreviewWarning

from prmforge import env

warnings.filterwarnings("ignore", category=PreviewWarning)
warnings.filterwarnings("ignore", category=BetaWarning)
env.quiet_progress_bars()


def automation_defs() -> dict[str, Any]:
    """Jobs, schedules and sensors of the code location."""
    from pipelines.jobs import JOBS
    from pipelines.schedules import SCHEDULES
    from pipelines.sensors import SENSORS

    return {"jobs": JOBS, "schedules": SCHEDULES, "sensors": SENSORS}
