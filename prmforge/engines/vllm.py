"""vLLM backend for GPUs: offline ``vllm.LLM`` in a spawned worker process.

Why a subprocess: CUDA state and the memory vLLM reserves
(``gpu_memory_utilization`` of the card) are only reliably released when the
process that created them exits. Running the engine in a worker that lives as
long as the engine object means the Dagster step (or the next engine) gets the
GPU back as soon as ``close()`` is called, and ``vllm`` is imported only
there, so CPU installs never need it. Prefix caching is on: the ``n``
samples of a prompt, and Monte-Carlo completions sharing a prefix, reuse the
prompt's KV blocks.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
from collections.abc import Sequence

from prmforge.engines.base import Completion, Engine, SamplingParams
from prmforge.model_files import local_model


class VLLMWorkerError(RuntimeError):
    """The vLLM worker failed to start or to generate."""


class VLLMEngine(Engine):
    """Offline vLLM generation in a worker process."""

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        enforce_eager: bool = False,
        start_timeout_s: float = 1800.0,
    ) -> None:
        path, _ = local_model(model)  # vLLM reads hub ids from the local HF cache (HF_HUB_OFFLINE in CI)
        self.cfg = {
            "model": path,
            "dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype),
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "trust_remote_code": trust_remote_code,
            "enforce_eager": enforce_eager,
        }
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        from prmforge.engines.vllm_worker import worker_main

        # not a daemon: vLLM starts its own worker processes for tensor parallelism
        self._proc = ctx.Process(target=worker_main, args=(child, self.cfg), daemon=False, name="prmforge-vllm")
        self._proc.start()
        child.close()
        msg = self._recv(start_timeout_s)
        if not msg.get("ok"):
            self.close()
            raise VLLMWorkerError(f"vLLM worker failed to start: {msg.get('error')}\n{msg.get('trace', '')}")

    def _recv(self, timeout_s: float | None = None) -> dict:
        waited = 0.0
        while not self._conn.poll(1.0):
            waited += 1.0
            if not self._proc.is_alive():
                raise VLLMWorkerError(f"vLLM worker exited with code {self._proc.exitcode}")
            if timeout_s is not None and waited >= timeout_s:
                raise VLLMWorkerError(f"vLLM worker did not answer within {timeout_s:.0f}s")
        try:
            return self._conn.recv()
        except EOFError as exc:
            raise VLLMWorkerError(f"vLLM worker closed the pipe (exit code {self._proc.exitcode})") from exc

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        if self._proc is None:
            raise VLLMWorkerError("engine is closed")
        p = dataclasses.asdict(params)
        p["stop"] = list(params.stop)
        self._conn.send({"op": "generate", "prompts": list(prompts), "params": p})
        msg = self._recv()
        if not msg.get("ok"):
            raise VLLMWorkerError(f"vLLM generation failed: {msg.get('error')}\n{msg.get('trace', '')}")
        return [[Completion(**c) for c in row] for row in msg["results"]]

    def close(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is None:
            return
        try:
            if proc.is_alive():
                self._conn.send({"op": "close"})
        except (BrokenPipeError, OSError):
            pass
        proc.join(timeout=60)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
        self._conn.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
