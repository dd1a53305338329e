"""Asset-check outcomes computed by the core, independent of Dagster.

Why here: the core functions (``prmforge.rollouts``, ``prmforge.labeling.stages``)
know what makes their output valid; the assets only turn each outcome into an
``AssetCheckResult`` (``assets.common.check_result``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result: ``blocking`` checks fail as ERROR (downstream waits), the others WARN."""

    name: str
    passed: bool
    blocking: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    description: str | None = None  # shown with the result (why it failed, what was skipped)
