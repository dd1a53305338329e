"""The one engine interface behind rollouts, MC completions and the LLM judge.

Every backend (``hf``, ``vllm``, ``openai``) takes a batch of prompts and
returns ``n`` completions per prompt. Callers never know which backend they
use, so the same labelling code runs on a laptop CPU and a GPU cluster.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``max_tokens`` is always explicit (vLLM's default is 16).

    ``sample_offset`` asks for samples ``offset .. offset+n-1`` of each prompt
    instead of ``0 .. n-1``, so a caller can draw more samples of a prompt in
    waves (adaptive MC sampling). Engines whose samples are addressable by
    index (``hf``: counter-based sampling) return exactly those samples, so
    the waves equal one call with the summed ``n``; the others send
    :attr:`request_seed`, a seed derived from ``(seed, sample_offset)``, so a
    later wave is a fresh draw rather than a repeat of the first.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    sample_offset: int = 0

    @property
    def request_seed(self) -> int:
        """The seed to send to a backend without addressable samples (``seed`` itself at offset 0)."""
        if self.sample_offset == 0:
            return self.seed
        digest = hashlib.sha256(f"{self.seed}\x1f{self.sample_offset}".encode()).hexdigest()
        return int(digest[:8], 16) & 0x7FFFFFFF


PROMPT_TOO_LONG = "prompt longer than the model's context"
EMPTY_PROMPT = "empty prompt"


@dataclass
class Completion:
    """One sampled continuation of one prompt.

    ``finish_reason`` is ``"stop"`` (EOS or a stop string), ``"length"``
    (hit ``max_tokens``), ``"error"`` (the backend failed for this prompt
    after its retries; ``error`` says why and ``text`` is empty) or
    ``"skipped"`` (the prompt cannot be run at all, e.g. it is longer than the
    model's context; ``error`` says why, starting with :data:`PROMPT_TOO_LONG`
    for that case). Errors are data, not exceptions, so one bad request never
    loses a whole shard.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None


def skip_reason(prompt_tokens: int, max_tokens: int, max_positions: int | None) -> str | None:
    """Why a prompt of ``prompt_tokens`` tokens cannot run with ``max_tokens`` new ones, or None if it can.

    The one rule every engine applies before sampling (HF in process, the vLLM
    worker, the OpenAI client when it knows the model's context), so a prompt
    is skipped the same way, with the same reason, whichever backend runs it:
    the prompt and the whole generation budget must fit the model's positions.
    """
    if prompt_tokens == 0:
        return EMPTY_PROMPT
    if max_positions is not None and prompt_tokens + max_tokens > max_positions:
        return (f"{PROMPT_TOO_LONG} (max {max_positions:,} positions): {prompt_tokens:,} prompt tokens + "
                f"max_tokens {max_tokens:,}")
    return None


def skipped_completions(n: int, prompt_tokens: int, reason: str) -> list[Completion]:
    """The ``n`` completions of a prompt that was not run: empty, ``finish_reason="skipped"``, ``error=reason``."""
    return [Completion(text="", prompt_tokens=prompt_tokens, finish_reason="skipped", error=reason) for _ in range(n)]


class Engine(ABC):
    """A text-completion engine."""

    @abstractmethod
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """Return, for each prompt, ``params.n`` completions (in order).

        With the same prompts, params (seed included) and model, the result
        is identical across calls, which is what makes shards resumable.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release processes, GPU memory or connections held by the engine."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
