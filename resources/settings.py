"""The run profile resource (``tiny`` / ``demo`` / ``world``)."""

from __future__ import annotations

from typing import Any, TypeVar

from dagster import ConfigurableResource
from pydantic import BaseModel, Field

from prmforge.profiles import active_profile, stage_settings

T = TypeVar("T", bound=BaseModel)


class SettingsResource(ConfigurableResource):
    """Which profile sizes the stages; ``PRMFORGE_PROFILE`` sets the default."""

    profile: str = Field(default_factory=active_profile)

    def stage(self, cls: type[T], stage: str, **overrides: Any) -> T:
        return stage_settings(cls, stage, self.profile, **overrides)
