"""The base class of every stage's settings.

Each pipeline stage (one asset, or the assets of one multi-asset) has exactly
one settings class deriving from :class:`StageSettings`, listed in
``prmforge.profiles.STAGE_SETTINGS`` under the asset's name. A settings class
holds the ``demo`` defaults; profiles list what they change and Dagster run
config (generated from the same class, ``resources.settings``) overrides both.

Why ``extra="forbid"``: a misspelt key in a profile or a run config must fail
loudly instead of silently running with the default. Why a description on
every field: the same text is the Dagster Launchpad's help and the generated
reference ``docs/settings.md``; ``tests/test_settings.py`` enforces both.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StageSettings(BaseModel):
    """Settings of one stage: documented fields, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid")
