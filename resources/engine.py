"""The policy engine resource: which backend samples the policy, and where.

``model`` empty means "the bootstrap policy": the asset resolves it from the
latest ``policy_model`` materialisation. Secrets never live here: for the
``openai`` backend only the *name* of the env var holding the key is configured.
"""

from __future__ import annotations

from pydantic import Field

from prmforge.engines.base import Engine
from prmforge.engines.factory import EngineConfig, make_engine
from resources.settings import resource_fields_from

_EngineFields = resource_fields_from(
    EngineConfig, "EngineFields", "Every field of ``EngineConfig``, with its default and description.",
    overrides={"model": (str, Field("", description="empty = the bootstrap policy (policy_model's uri); else a "
                                    "hub id, local folder, file:// or s3:// URI, or the served model name"))},
)


class EngineResource(_EngineFields):
    """Backend (``hf`` | ``vllm`` | ``openai``) and its settings: the fields of ``EngineConfig``."""

    def config(self, model_override: str | None = None) -> EngineConfig:
        values = {k: getattr(self, k) for k in EngineConfig.model_fields}
        if model_override:
            values["model"] = model_override
        return EngineConfig(**values)

    def make(self, model_override: str | None = None) -> Engine:
        """Build the engine (``model_override`` replaces an empty or configured model)."""
        return make_engine(self.config(model_override))
