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

    def config(self) -> JudgeConfig:
        engine = EngineConfig(**{k: getattr(self, k) for k in EngineConfig.model_fields if hasattr(self, k)})
        return JudgeConfig(kind=self.kind, engine=engine)

    def make(self) -> Judge:
        """The configured judge; use it as a context manager so an LLM judge's engine is closed."""
        return make_judge(self.config())
