"""Score PRM steps with vLLM's pooling runner (``Qwen2ForProcessRewardModel``, STEP pooling).

Why: the exported layout (:mod:`prmforge.prm.export`) is what vLLM serves with no
custom code; scoring through it here is what makes the export trustworthy, because
vLLM has had silent STEP-pooling bugs. The engine lives in a worker process
(:mod:`prmforge.prm.vllm_prm_worker`) that shuts its engine core down and exits,
like the generation engine; its whole process group is reaped on ``close()``.
The inputs are token ids encoded exactly as :func:`prmforge.prm.model.score_steps`
encodes them, so both backends see the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from prmforge.engines.vllm import WorkerProcess
from prmforge.prm.data import encode_example
from prmforge.prm.model import format_prompt


class VLLMScoreError(RuntimeError):
    """The vLLM PRM worker failed to start or to score."""


class VLLMPRMScorer:
    """One pooling-runner vLLM engine on an exported PRM folder, in a worker process."""

    def __init__(self, folder: str, step_token_id: int | None = None, max_model_len: int | None = None,
                 cpu_kv_cache_gib: float = 1.0, dtype: str = "float32", start_timeout_s: float = 1800.0,
                 close_timeout_s: float = 20.0, *, pooling: str = "STEP",
                 returned_token_ids: Sequence[int] | None = (0, 1), convert: str | None = None,
                 hf_overrides: dict[str, Any] | None = None, label_index: int = 1) -> None:
        """``pooling``: STEP (rows at ``step_token_id``) or ALL (rows at the positions given to ``score_ids``).

        ``convert``/``hf_overrides`` are vLLM's, for layouts read through an adapter
        (a causal LM as a classifier); ``label_index`` is the column holding P(correct).
        """
        cfg: dict[str, Any] = {"model": str(folder), "pooling": pooling, "step_tag_id": step_token_id,
                               "returned_token_ids": list(returned_token_ids or []), "convert": convert,
                               "hf_overrides": hf_overrides or {}, "label_index": label_index,
                               "max_model_len": max_model_len, "cpu_kv_cache_gib": cpu_kv_cache_gib, "dtype": dtype}
        self._worker: WorkerProcess | None = WorkerProcess(
            "prmforge.prm.vllm_prm_worker", cfg, VLLMScoreError, "vLLM PRM worker", start_timeout_s, close_timeout_s)
        self.platform: str | None = self._worker.platform

    @property
    def pid(self) -> int | None:
        """The worker's pid (also the process group of vLLM's processes)."""
        return self._worker.pid if self._worker is not None else None

    def score_ids(self, token_ids: Sequence[Sequence[int]],
                  positions: Sequence[Sequence[int]] | None = None) -> list[list[float]]:
        """P(correct) at every step of every token-id sequence (``positions``: with ALL pooling)."""
        if not token_ids:
            return []
        if self._worker is None:
            raise VLLMScoreError("scorer is closed")
        msg = self._worker.request({"op": "score", "token_ids": [list(map(int, ids)) for ids in token_ids],
                                    "positions": None if positions is None else [list(map(int, p)) for p in positions]},
                                   "vLLM PRM scoring failed")
        return msg["probs"]

    def close(self) -> None:
        """Shut the engine down; returns once no process of the worker's group is left."""
        if getattr(self, "_worker", None) is None:
            return
        worker, self._worker = self._worker, None
        worker.close()

    def __enter__(self) -> VLLMPRMScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_items(tokenizer, items: Sequence[tuple[str, Sequence[str]]], step_token_id: int, max_length: int,
                 prompt_format: str = "world") -> list[tuple[list[int], int]]:
    """``(token ids, dropped steps)`` per item, encoded as :func:`prmforge.prm.model.score_steps` does."""
    out = []
    for problem, steps in items:
        ex = encode_example(tokenizer, format_prompt(problem, prompt_format, tokenizer), list(steps), step_token_id, max_length)
        out.append((ex.input_ids, ex.n_dropped_steps))
    return out


def score_steps_vllm(scorer: VLLMPRMScorer, tokenizer, items: Sequence[tuple[str, Sequence[str]]],
                     step_token_id: int, max_length: int, prompt_format: str = "world") -> list[list[float]]:
    """Like :func:`prmforge.prm.model.score_steps`, through vLLM: NaN for steps past ``max_length``."""
    encoded = encode_items(tokenizer, items, step_token_id, max_length, prompt_format)
    probs = scorer.score_ids([ids for ids, _ in encoded])
    return [p + [math.nan] * dropped for p, (_, dropped) in zip(probs, encoded, strict=True)]
