"""The step judge resource: which :class:`prmforge.labeling.judges.Judge` ``judge_step_labels`` uses."""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field

from prmforge.engines.factory import EngineConfig
from prmforge.labeling.judges import Judge, JudgeConfig, make_judge


class JudgeResource(ConfigurableResource):
    """``kind="calculator"`` needs nothing; ``kind="llm"`` needs an engine model.

    The LLM settings mirror ``EngineConfig``; an API key is never configured
    here, only the *name* of the env var that holds it (``api_key_env``).
    """

    kind: Literal["calculator", "llm"] = "calculator"
    backend: Literal["hf", "vllm", "openai"] = "hf"
    model: str = Field("", description="judge model (hub id, folder, s3:// URI or served name); llm only")
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 64
    trust_remote_code: bool = False
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 16
    timeout_s: float = 120.0
    max_retries: int = 4
    # vllm (see EngineConfig)
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = None
    cpu_kv_cache_gib: float = 1.0
    cpu_threads_bind: str = "auto"

    def config(self) -> JudgeConfig:
        engine = EngineConfig(**{k: getattr(self, k) for k in EngineConfig.model_fields if hasattr(self, k)})
        return JudgeConfig(kind=self.kind, engine=engine)

    def make(self) -> Judge:
        """The configured judge; use it as a context manager so an LLM judge's engine is closed."""
        return make_judge(self.config())
