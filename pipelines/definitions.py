"""The prmforge code location: the single ``Definitions`` object."""

from __future__ import annotations

import warnings
from typing import Any

from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

import assets.labels
import assets.policy
import assets.prm
import assets.rollouts
import assets.seed
from prmforge.env import executor
from resources import build_resources

# Jobs spanning the seed stage (single-run backfills) and the GPU stages (one
# dataset per run) mix backfill policies; Dagster then uses the smallest
# (one partition per run), which is what those jobs should do. Its warning
# says nothing actionable, so it is not shown on every load.
warnings.filterwarnings("ignore", message=r"Asset job .* materializes assets with varying BackfillPolicies",
                        category=UserWarning)

ASSET_MODULES = [assets.seed, assets.policy, assets.rollouts, assets.labels, assets.prm]


def _executor() -> Any:
    """``PRMFORGE_EXECUTOR=k8s`` runs each step in its own pod (``k8s_job_executor``,
    needs the ``k8s`` extra); anything else keeps Dagster's default executor."""
    if executor() == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return None


def build_defs(**resource_overrides: Any) -> Definitions:
    """Build the code location; tests pass resource overrides (storage root, profile)."""
    from pipelines import automation_defs

    return Definitions(
        # Automation conditions, the gpu pool, retries and backfill policies are declared
        # on each asset's decorator (values and reasons: pipelines/automation.py).
        assets=load_assets_from_modules(ASSET_MODULES),
        asset_checks=load_asset_checks_from_modules(ASSET_MODULES),
        resources=build_resources(**resource_overrides),
        executor=_executor(),
        **automation_defs(),
    )


defs = build_defs()
