"""The prmforge code location: the single ``Definitions`` object."""

from __future__ import annotations

from typing import Any

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

import assets.labels
import assets.policy
import assets.prm
import assets.rollouts
import assets.seed
from resources import build_resources

ASSET_MODULES = [assets.seed, assets.policy, assets.rollouts, assets.labels, assets.prm]


def build_defs(**resource_overrides: Any) -> Definitions:
    """Build the code location; tests pass resource overrides (storage root, profile)."""
    from pipelines import automation_defs
    from pipelines.automation import apply_orchestration

    return Definitions(
        # Automation conditions, the gpu pool, retries and backfill policies
        # are applied here, centrally (see pipelines/automation.py).
        assets=apply_orchestration(load_assets_from_modules(ASSET_MODULES)),
        asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
        resources=build_resources(**resource_overrides),
        **automation_defs(),
    )


defs = build_defs()
