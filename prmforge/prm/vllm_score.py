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
import os
import select
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from typing import IO, Any

from prmforge.engines.vllm import _reap
from prmforge.engines.vllm_worker import recv_msg, send_msg
from prmforge.prm.data import encode_example
from prmforge.prm.model import format_prompt


class VLLMScoreError(RuntimeError):
    """The vLLM PRM worker failed to start or to score."""


class VLLMPRMScorer:
    """One pooling-runner vLLM engine on an exported PRM folder, in a worker process."""

    def __init__(self, folder: str, step_token_id: int, max_model_len: int | None = None,
                 cpu_kv_cache_gib: float = 1.0, dtype: str = "float32", start_timeout_s: float = 1800.0,
                 close_timeout_s: float = 20.0) -> None:
        cfg: dict[str, Any] = {"model": str(folder), "step_tag_id": int(step_token_id),
                               "max_model_len": max_model_len, "cpu_kv_cache_gib": cpu_kv_cache_gib, "dtype": dtype}
        child_rx, parent_tx = os.pipe()
        parent_rx, child_tx = os.pipe()
        try:
            self._proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "prmforge.prm.vllm_prm_worker", str(child_rx), str(child_tx)],
                pass_fds=(child_rx, child_tx), stdin=subprocess.DEVNULL)
        finally:
            os.close(child_rx)
            os.close(child_tx)
        self._tx: IO[bytes] = os.fdopen(parent_tx, "wb")
        self._rx: IO[bytes] = os.fdopen(parent_rx, "rb")
        self._finalizer = weakref.finalize(self, _reap, self._proc, self._tx, self._rx, close_timeout_s)
        try:
            send_msg(self._tx, {"op": "start", "cfg": cfg})
            msg = self._recv(start_timeout_s)
        except BaseException:
            self.close()
            raise
        if not msg.get("ok"):
            self.close()
            raise VLLMScoreError(f"vLLM PRM worker failed to start: {msg.get('error')}\n{msg.get('trace', '')}")
        self.platform: str | None = msg.get("platform")

    @property
    def pid(self) -> int | None:
        """The worker's pid (also the process group of vLLM's processes)."""
        return self._proc.pid if self._proc is not None else None

    def _recv(self, timeout_s: float | None = None) -> dict:
        assert self._proc is not None
        start = time.monotonic()
        while not select.select([self._rx], [], [], 1.0)[0]:
            if self._proc.poll() is not None:
                raise VLLMScoreError(f"vLLM PRM worker exited with code {self._proc.returncode}")
            if timeout_s is not None and time.monotonic() - start >= timeout_s:
                raise VLLMScoreError(f"vLLM PRM worker did not answer within {timeout_s:.0f}s")
        try:
            return recv_msg(self._rx)
        except EOFError as exc:
            raise VLLMScoreError(f"vLLM PRM worker closed the pipe (exit code {self._proc.poll()})") from exc

    def score_ids(self, token_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """P(correct) at every step token of every token-id sequence."""
        if not token_ids:
            return []
        if self._proc is None:
            raise VLLMScoreError("scorer is closed")
        send_msg(self._tx, {"op": "score", "token_ids": [list(map(int, ids)) for ids in token_ids]})
        msg = self._recv()
        if not msg.get("ok"):
            raise VLLMScoreError(f"vLLM PRM scoring failed: {msg.get('error')}\n{msg.get('trace', '')}")
        return msg["probs"]

    def close(self) -> None:
        """Shut the engine down; returns once no process of the worker's group is left."""
        if getattr(self, "_proc", None) is None:
            return
        self._proc = None
        self._finalizer()

    def __enter__(self) -> VLLMPRMScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_items(tokenizer, items: Sequence[tuple[str, Sequence[str]]], step_token_id: int, max_length: int,
                 prompt_format: str = "world") -> list[tuple[list[int], int]]:
    """``(token ids, dropped steps)`` per item, encoded as :func:`prmforge.prm.model.score_steps` does."""
    out = []
    for problem, steps in items:
        ex = encode_example(tokenizer, format_prompt(problem, prompt_format), list(steps), step_token_id, max_length)
        out.append((ex.input_ids, ex.n_dropped_steps))
    return out


def score_steps_vllm(scorer: VLLMPRMScorer, tokenizer, items: Sequence[tuple[str, Sequence[str]]],
                     step_token_id: int, max_length: int, prompt_format: str = "world") -> list[list[float]]:
    """Like :func:`prmforge.prm.model.score_steps`, through vLLM: NaN for steps past ``max_length``."""
    encoded = encode_items(tokenizer, items, step_token_id, max_length, prompt_format)
    probs = scorer.score_ids([ids for ids, _ in encoded])
    return [p + [math.nan] * dropped for p, (_, dropped) in zip(probs, encoded, strict=True)]
