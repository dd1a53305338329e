"""The step judge resource: which :class:`prmforge.labeling.judges.Judge` ``judge_step_labels`` uses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prmforge.engines.factory import EngineConfig
from prmforge.labeling.judges import Judge, JudgeConfig, make_judge
from resources.settings import resource_fields_from

_JudgeEngineFields = resource_fields_from(
    EngineConfig, "JudgeEngineFields", "Every field of ``EngineConfig``, for the LLM judge's engine.",
    overrides={
        "model": (str, Field("", description="judge model (hub id, folder, s3:// URI or served name); llm only")),
        # Judge prompts hold a whole solution: fewer of them are decoded together than rollout rows.
        "batch_size": (int, Field(64, gt=0, description="hf: judge prompts decoded together")),
        # A judge writes a verdict per step of a whole solution: longer answers than one rollout step.
        "timeout_s": (float, Field(120.0, gt=0, description="openai: seconds before one judge request is "
                                   "abandoned")),
    },
)


class JudgeResource(_JudgeEngineFields):
    """``kind="calculator"`` needs nothing; ``kind="llm"`` needs an engine model.

    The LLM settings are the fields of ``EngineConfig`` (generated, so they
    cannot drift); an API key is never configured here, only the *name* of the
    env var that holds it (``api_key_env``).
    """

    kind: Literal["calculator", "llm"] = Field("calculator", description="calculator: recompute <<a=b>> "
                                                "annotations; llm: ask a judge model for the first wrong step")

    chat_template: bool | None = Field(None, description="llm: put the critique prompt in the judge model's chat "
                                       "template; unset: when its tokenizer has one (openai without a local "
                                       "tokenizer: the server applies it, via /v1/chat/completions); false: the "
                                       "bare prompt (a base model)")

    def config(self) -> JudgeConfig:
        engine = EngineConfig(**{k: getattr(self, k) for k in EngineConfig.model_fields})
        return JudgeConfig(kind=self.kind, engine=engine, chat_template=self.chat_template)

    def make(self) -> Judge:
        """The configured judge; use it as a context manager so an LLM judge's engine is closed."""
        return make_judge(self.config())
