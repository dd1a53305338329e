"""The step judge resource: the calculator (embedded default) or an LLM through any engine backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field

from prmforge.engines.base import Engine
from prmforge.engines.factory import EngineConfig, make_engine


@dataclass(frozen=True)
class JudgeRow:
    status: str
    first_error: int | None
    detail: str
    raw_output: str
    prompt_tokens: int
    completion_tokens: int


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

    def name(self) -> str:
        """Provenance string stored with every label (``calculator`` or ``llm:<backend>:<model>``)."""
        return "calculator" if self.kind == "calculator" else f"llm:{self.backend}:{self.model}"

    def engine_config(self) -> EngineConfig:
        values = {k: getattr(self, k) for k in EngineConfig.model_fields if hasattr(self, k)}
        return EngineConfig(**values)

    def make_engine(self) -> Engine:
        if self.kind != "llm":
            raise ValueError("the calculator judge has no engine")
        if not self.model:
            raise ValueError("judge kind 'llm' needs a model: set resources.judge.config.model")
        return make_engine(self.engine_config())

    def judge(self, problems: Sequence[str], steps: Sequence[Sequence[str]], max_tokens: int = 512,
              temperature: float = 0.0, seed: int = 0, engine: Engine | None = None) -> list[JudgeRow]:
        """Verdicts for many solutions; the LLM engine is built once per call unless given."""
        if self.kind == "calculator":
            return [_calculator_row(s) for s in steps]
        from prmforge.labeling.llm_judge import judge_with_engine

        own = engine is None
        engine = engine or self.make_engine()
        try:
            outs = judge_with_engine(engine, problems, steps, max_tokens=max_tokens, temperature=temperature,
                                     seed=seed)
        finally:
            if own:
                engine.close()
        return [JudgeRow(o.verdict.status, o.verdict.first_error, o.verdict.detail, o.raw[-2000:],
                         o.prompt_tokens, o.completion_tokens) for o in outs]


def _calculator_row(steps: Sequence[str]) -> JudgeRow:
    from prmforge.labeling.calculator import explain

    if not steps:
        return JudgeRow("error", None, "rollout has no steps", "", 0, 0)
    idx, found = explain(list(steps))
    detail = "; ".join(f"{f.statement} (expected {f.expected})" for f in found)[:500]
    return JudgeRow("ok", idx, detail, "", 0, 0)
