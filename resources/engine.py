"""The policy engine resource: which backend samples the policy, and where.

``model`` empty means "the bootstrap policy": the asset resolves it from the
latest ``policy_model`` materialisation. Secrets never live here: for the
``openai`` backend only the *name* of the env var holding the key is configured.
"""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field

from prmforge.engines.base import Engine
from prmforge.engines.factory import EngineConfig, make_engine


class EngineResource(ConfigurableResource):
    """Backend (``hf`` | ``vllm`` | ``openai``) and its settings; see ``EngineConfig``."""

    backend: Literal["hf", "vllm", "openai"] = "hf"
    model: str = Field("", description="empty = the bootstrap policy (policy_model's uri)")
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 256
    trust_remote_code: bool = False
    num_threads: int | None = None
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 16
    timeout_s: float = 60.0
    max_retries: int = 4
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = None
    cpu_kv_cache_gib: float = 1.0
    cpu_threads_bind: str = "auto"

    def config(self, model_override: str | None = None) -> EngineConfig:
        values = {k: getattr(self, k) for k in EngineConfig.model_fields}
        if model_override:
            values["model"] = model_override
        return EngineConfig(**values)

    def make(self, model_override: str | None = None) -> Engine:
        """Build the engine (``model_override`` replaces an empty or configured model)."""
        return make_engine(self.config(model_override))
