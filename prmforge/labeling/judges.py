"""Step judges: one class per way of finding a solution's first wrong step.

Shaped like :class:`prmforge.engines.base.Engine`: a judge is built once per
stage run (:func:`make_judge`), judges many solutions per call, is a context
manager and releases what it holds in :meth:`Judge.close`. A new judge is one
subclass of :class:`Judge` (``judge`` plus a ``name``); ``label_judge``
(``prmforge.labeling.stages``) takes any instance, and :func:`make_judge` maps
a configured ``kind`` to its class.

Verdicts are data, never guesses: a judge that cannot decide returns a row
with status ``unparsed`` / ``abstain`` / ``error`` and ``first_error=None``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from prmforge.engines.base import Engine
from prmforge.engines.factory import EngineConfig, make_engine
from prmforge.labeling.settings import JudgeSettings


@dataclass(frozen=True)
class Judgement:
    """One verdict as stored in ``judge_step_labels`` (status ok | unparsed | abstain | error)."""

    status: str
    first_error: int | None  # -1: no wrong step; None unless status == "ok"
    detail: str = ""
    raw_output: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Judge(ABC):
    """Finds the first wrong step (or -1) of many solutions."""

    #: the judge reads the problem text; rollouts whose problem is unknown become error rows (never judged blind)
    needs_problem: bool = True
    #: judging costs model calls: the stage shards and resumes it (a millisecond judge runs in one go)
    resumable: bool = True

    @property
    @abstractmethod
    def name(self) -> str:
        """Provenance stored with every verdict (``calculator``, ``llm:<backend>:<model>``...)."""

    def identity(self) -> dict[str, Any]:
        """What changes the verdicts (part of the resumable run key); the name by default."""
        return {"judge": self.name}

    @abstractmethod
    def judge(self, problems: Sequence[str], steps: Sequence[Sequence[str]],
              settings: JudgeSettings) -> list[Judgement]:
        """One verdict per solution, in order (``problems[i]`` is the problem of ``steps[i]``)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engines, processes or connections held by the judge."""

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CalculatorJudge(Judge):
    """The embedded arithmetic checker (``prmforge.labeling.calculator``): no model, no problem text."""

    needs_problem = False
    resumable = False

    @property
    def name(self) -> str:
        return "calculator"

    def judge(self, problems: Sequence[str], steps: Sequence[Sequence[str]],
              settings: JudgeSettings) -> list[Judgement]:
        from prmforge.labeling.calculator import explain

        out = []
        for st in steps:
            if not st:
                out.append(Judgement("error", None, "rollout has no steps"))
                continue
            idx, found = explain(list(st))
            out.append(Judgement("ok", idx, "; ".join(f"{f.statement} (expected {f.expected})" for f in found)[:500]))
        return out


class LLMJudge(Judge):
    """A critique prompt through any engine backend (``prmforge.labeling.llm_judge``).

    The prompt is the user turn of the judge model's chat template (real judges are
    instruct models), decided once per judge by :meth:`prompt_plan`:

    * ``hf`` / ``vllm``: the model's own tokenizer, loaded here
      (:func:`prmforge.prompts.chat_tokenizer`, as for the policy), applies it;
    * ``openai`` with ``tokenizer`` (a local copy of the served model's): the same, and the
      templated text goes to ``/v1/completions``;
    * ``openai`` without one: the server applies it: prompts go to ``/v1/chat/completions``
      (``EngineConfig.chat_endpoint``), since this process cannot see the template.

    ``chat_template`` None uses the template when the model has one (on the server path:
    always, as a chat endpoint); True requires one; False sends the bare critique prompt
    (a base model). The engine is built on the first call that needs it, so a fully
    resumed stage never loads a model, and lives until :meth:`close`.
    """

    def __init__(self, engine: EngineConfig, chat_template: bool | None = None) -> None:
        if not engine.model:
            raise ValueError("judge kind 'llm' needs a model (hub id, folder, storage URI or served name)")
        if chat_template is False and engine.backend == "openai" and engine.chat_endpoint:
            raise ValueError("judge chat_template: false contradicts chat_endpoint: true (the server would apply it)")
        self.engine_config = engine
        self.chat_template = chat_template
        self._plan: tuple[Any, EngineConfig] | None = None
        self._engine: Engine | None = None

    @property
    def name(self) -> str:
        return f"llm:{self.engine_config.backend}:{self.engine_config.model}"

    def prompt_plan(self) -> tuple[Any, EngineConfig]:
        """``(tokenizer whose chat template wraps each prompt, or None; the engine config to run)``."""
        if self._plan is None:
            cfg = self.engine_config
            if cfg.backend == "openai" and (cfg.chat_endpoint or not cfg.tokenizer):
                server_side = cfg.chat_endpoint or self.chat_template is not False
                self._plan = (None, cfg.model_copy(update={"chat_endpoint": server_side}))
            else:
                from prmforge.prompts import chat_tokenizer

                ref = cfg.tokenizer if cfg.backend == "openai" else cfg.model
                self._plan = (chat_tokenizer(ref, self.chat_template, cfg.trust_remote_code), cfg)
        return self._plan

    def identity(self) -> dict[str, Any]:
        tok, cfg = self.prompt_plan()
        where = "server" if cfg.backend == "openai" and cfg.chat_endpoint else "tokenizer" if tok is not None else "none"
        return {**cfg.identity(), "chat_template": where}

    def judge(self, problems: Sequence[str], steps: Sequence[Sequence[str]],
              settings: JudgeSettings) -> list[Judgement]:
        from prmforge.labeling.llm_judge import judge_with_engine

        if not steps:
            return []
        tok, cfg = self.prompt_plan()
        if self._engine is None:
            self._engine = make_engine(cfg)
        outs = judge_with_engine(self._engine, problems, steps, max_tokens=settings.max_tokens,
                                 temperature=settings.temperature, seed=settings.seed, chat_tokenizer=tok)
        return [Judgement(o.verdict.status, o.verdict.first_error, o.verdict.detail, o.raw[-2000:],
                          o.prompt_tokens, o.completion_tokens) for o in outs]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class JudgeConfig(BaseModel):
    """Which judge ``judge_step_labels`` uses; ``engine`` is read by the LLM judge only."""

    kind: Literal["calculator", "llm"] = "calculator"
    engine: EngineConfig = Field(default_factory=EngineConfig)
    chat_template: bool | None = None  # LLM judge: None = the model's chat template when it has one


def make_judge(cfg: JudgeConfig) -> Judge:
    """The configured judge (an LLM judge's engine is built lazily, on its first verdict)."""
    if cfg.kind == "calculator":
        return CalculatorJudge()
    if cfg.kind == "llm":
        return LLMJudge(cfg.engine, cfg.chat_template)
    raise ValueError(f"unknown judge kind {cfg.kind!r}")
