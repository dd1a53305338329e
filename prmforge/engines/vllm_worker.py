"""The vLLM generation worker process, and the worker loop (:func:`serve`) the PRM scorer shares.

It is started by :class:`prmforge.engines.vllm.VLLMEngine` as a fresh
interpreter (``python -m prmforge.engines.vllm_worker FD_IN FD_OUT``), so the
parent never initialises CUDA and every byte of device memory is returned to
the system when the worker exits. A plain subprocess rather than a
``multiprocessing`` child: Python joins non-daemon ``multiprocessing``
children at exit, so a caller that raised before ``close()`` hung waiting for
a worker that was waiting for it. Here the parent's exit closes the pipe, the
worker reads EOF and shuts down by itself. Protocol: length-prefixed JSON
over two pipes (stdout/stderr stay free for vLLM's logs):

* first request ``{"op": "start", "cfg": {...}}``; answer ``{"ok": True, "ready": True, "platform": ...}``
  or ``{"ok": False, "error": ...}``
* request ``{"op": "generate", "prompts": [...], "params": {...}}`` ->
  ``{"ok": True, "results": [[{text, prompt_tokens, completion_tokens, finish_reason, error}, ...], ...]}``;
  a prompt that does not fit the model's context with ``max_tokens`` is not sent to vLLM (which would
  fail the whole batch, or shorten the generation) but answered ``skipped`` with the reason, by the rule
  every engine shares (:func:`prmforge.engines.base.skip_reason`)
* request ``{"op": "close"}`` (or EOF) -> the worker shuts vLLM's engine core down and exits.

The worker makes itself a process-group leader (``os.setsid``), so vLLM's
``EngineCore`` and ``Worker`` processes share its group and the parent can
kill them all at once if a clean shutdown does not finish in time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

from prmforge import env
from prmforge.engines.base import skip_reason, skipped_completions

GiB = 1 << 30
_HEADER = struct.Struct("!Q")


def send_msg(f: IO[bytes], msg: dict) -> None:
    """Write one length-prefixed JSON message."""
    data = json.dumps(msg).encode()
    f.write(_HEADER.pack(len(data)) + data)
    f.flush()


def recv_msg(f: IO[bytes]) -> dict:
    """Read one message; ``EOFError`` when the other side closed the pipe."""
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("pipe closed")
    data = f.read(_HEADER.unpack(head)[0])
    return json.loads(data)


def _build_llm(cfg: dict[str, Any]):
    from vllm import LLM
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    kwargs: dict[str, Any] = {
        "model": cfg["model"],
        "tensor_parallel_size": cfg.get("tensor_parallel_size", 1),
        "enable_prefix_caching": bool(cfg.get("enable_prefix_caching", True)),
        "trust_remote_code": bool(cfg.get("trust_remote_code", False)),
        "load_format": "safetensors",  # never unpickle weights
        "seed": 0,
        "enforce_eager": bool(cfg.get("enforce_eager", False)),
    }
    if on_cpu:
        # Seeded sampling crashes once a prefill is chunked on CPU ("CPU Generator does not use
        # offset"), and without a bound vLLM reserves gpu_memory_utilization of the host's RAM.
        kwargs["enable_chunked_prefill"] = False
        kwargs["kv_cache_memory_bytes"] = int(float(cfg.get("cpu_kv_cache_gib", 1.0)) * GiB)
    else:
        kwargs["gpu_memory_utilization"] = cfg.get("gpu_memory_utilization", 0.85)
    if cfg.get("dtype") and cfg["dtype"] != "auto":
        kwargs["dtype"] = cfg["dtype"]
    if cfg.get("max_model_len"):
        kwargs["max_model_len"] = int(cfg["max_model_len"])
    if cfg.get("max_num_seqs"):
        kwargs["max_num_seqs"] = int(cfg["max_num_seqs"])
    return LLM(**kwargs), ("cpu" if on_cpu else current_platform.device_type)


def _generate(llm, prompts: list[str], p: dict[str, Any]) -> list[list[dict]]:
    from vllm import SamplingParams

    n, max_tokens = int(p["n"]), int(p["max_tokens"])
    sp = SamplingParams(n=n, temperature=float(p["temperature"]), top_p=float(p["top_p"]),
                        max_tokens=max_tokens, seed=int(p["seed"]), stop=list(p.get("stop") or []) or None)
    tokenizer, max_len = llm.get_tokenizer(), int(llm.model_config.max_model_len)
    results: list[list[dict] | None] = [None] * len(prompts)
    run = []
    for i, text in enumerate(prompts):
        count = len(tokenizer.encode(text))
        why = skip_reason(count, max_tokens, max_len)
        if why is None:
            run.append(i)
        else:
            results[i] = [dataclasses.asdict(c) for c in skipped_completions(n, count, why)]
    outs = llm.generate([prompts[i] for i in run], sp, use_tqdm=False) if run else []
    for i, o in zip(run, outs, strict=True):
        prompt_tokens = len(o.prompt_token_ids or [])
        row = []
        for c in sorted(o.outputs, key=lambda c: c.index):
            reason = "length" if c.finish_reason == "length" else "stop"
            row.append({"text": c.text, "prompt_tokens": prompt_tokens, "completion_tokens": len(c.token_ids),
                        "finish_reason": reason})
        results[i] = row
    return [row or [] for row in results]


def _shutdown(llm) -> None:
    """Stop the engine core (and its workers) now.

    The ``EngineCore`` process is a non-daemon child of this one: returning
    without stopping it first makes Python's exit wait for it, and a worker
    killed instead leaves it (and the device memory it holds) orphaned.
    """
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None:
        core.shutdown()


def serve(rx: IO[bytes], tx: IO[bytes], build: Callable[[dict[str, Any]], tuple[Any, str]],
          handle: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> None:
    """The worker loop every vLLM worker shares: start, answer requests until ``close`` or EOF, shut down.

    ``build(cfg)`` returns ``(llm, platform)``; ``handle(llm, request)`` returns the
    answer's payload (``ok`` is added). The generation worker and the PRM scoring
    worker (:mod:`prmforge.prm.vllm_prm_worker`) differ only in those two functions,
    so the lifecycle (process group, start-up errors, EOF, engine-core shutdown) is
    written once.
    """
    os.setsid()  # vLLM's processes join this group: the parent can always reap them together
    try:
        cfg = recv_msg(rx)["cfg"]
    except EOFError:
        return
    # CPU-only settings are read from the environment by vLLM's CPU platform; a GPU build ignores them.
    env.export("VLLM_CPU_OMP_THREADS_BIND", str(cfg.get("cpu_threads_bind") or "auto"))
    llm = None
    try:
        llm, platform = build(cfg)
    except BaseException as exc:  # report any start-up failure (no vllm, no device, bad model)
        send_msg(tx, {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]})
        return
    try:
        send_msg(tx, {"ok": True, "ready": True, "platform": platform})
        while True:
            try:
                msg = recv_msg(rx)
            except EOFError:  # the parent went away: stop too
                break
            if msg.get("op") == "close":
                break
            try:
                result = {"ok": True, **handle(llm, msg)}
            except Exception as exc:
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]}
            send_msg(tx, result)
    except BrokenPipeError:  # the parent went away while we answered
        pass
    finally:
        _shutdown(llm)


def worker_main(rx: IO[bytes], tx: IO[bytes]) -> None:
    """Serve one generation engine (requests ``{"op": "generate", "prompts", "params"}``)."""
    serve(rx, tx, _build_llm, lambda llm, msg: {"results": _generate(llm, msg["prompts"], msg["params"])})


if __name__ == "__main__":
    fd_in, fd_out = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(fd_in, "rb") as _rx, os.fdopen(fd_out, "wb") as _tx:
        worker_main(_rx, _tx)
