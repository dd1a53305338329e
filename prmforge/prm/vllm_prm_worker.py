"""The vLLM PRM scoring worker: a fresh interpreter that owns one pooling-runner ``LLM``.

Started by :class:`prmforge.prm.vllm_score.VLLMPRMScorer` as
``python -m prmforge.prm.vllm_prm_worker FD_IN FD_OUT`` for the same reason as the
generation worker (:mod:`prmforge.engines.vllm_worker`): vLLM's memory and its
``EngineCore`` processes are only reliably released when the process that built the
engine shuts it down and exits. Protocol (length-prefixed JSON, the generation
worker's framing):

* ``{"op": "start", "cfg": {"model", "step_tag_id", "max_model_len", "cpu_kv_cache_gib", "dtype"}}``
  -> ``{"ok": True, "platform": ...}`` or ``{"ok": False, "error": ...}``
* ``{"op": "score", "token_ids": [[...], ...]}`` -> ``{"ok": True, "probs": [[p_correct per step], ...]}``
* ``{"op": "close"}`` or EOF -> the engine core is shut down and the worker exits.

Prompts are token ids (``TokensPrompt``), never text: vLLM's own tokenisation of a
text can differ from the one the reference used (docs/prm.md, parity).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import IO, Any

from prmforge import env
from prmforge.engines.vllm_worker import recv_msg, send_msg

GiB = 1 << 30


def _build(cfg: dict[str, Any]):
    from vllm import LLM
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    kwargs: dict[str, Any] = {
        "model": cfg["model"], "runner": "pooling", "load_format": "safetensors", "seed": 0,
        "trust_remote_code": False, "enforce_eager": bool(cfg.get("enforce_eager", False)),
        "pooler_config": {"pooling_type": "STEP", "step_tag_id": int(cfg["step_tag_id"]),
                          "returned_token_ids": [0, 1]},
        "dtype": cfg.get("dtype") or "float32",
    }
    if cfg.get("max_model_len"):
        kwargs["max_model_len"] = int(cfg["max_model_len"])
    if on_cpu:
        kwargs["kv_cache_memory_bytes"] = int(float(cfg.get("cpu_kv_cache_gib", 1.0)) * GiB)
    return LLM(**kwargs), ("cpu" if on_cpu else current_platform.device_type)


def _score(llm, token_ids: list[list[int]]) -> list[list[float]]:
    from vllm.inputs import TokensPrompt

    outs = llm.encode([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], pooling_task="token_classify",
                      use_tqdm=False)
    result = []
    for o in outs:
        data = o.outputs.data.float()
        result.append([float(x) for x in data.reshape(-1, 2)[:, 1]])
    return result


def worker_main(rx: IO[bytes], tx: IO[bytes]) -> None:
    """Start the engine, answer ``score`` requests until ``close`` or EOF, then shut the engine core down."""
    os.setsid()  # vLLM's processes join this group: the parent can reap them together
    try:
        cfg = recv_msg(rx)["cfg"]
    except EOFError:
        return
    env.export("VLLM_CPU_OMP_THREADS_BIND", str(cfg.get("cpu_threads_bind") or "auto"))
    llm = None
    try:
        llm, platform = _build(cfg)
    except BaseException as exc:  # report any start-up failure (no vllm, bad folder, unsupported head_dim)
        send_msg(tx, {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]})
        return
    try:
        send_msg(tx, {"ok": True, "platform": platform})
        while True:
            try:
                msg = recv_msg(rx)
            except EOFError:
                break
            if msg.get("op") == "close":
                break
            try:
                answer = {"ok": True, "probs": _score(llm, msg["token_ids"])}
            except Exception as exc:
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]}
            send_msg(tx, answer)
    except BrokenPipeError:
        pass
    finally:
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:  # a non-daemon child: exiting without this waits for it forever
            core.shutdown()


if __name__ == "__main__":
    fd_in, fd_out = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(fd_in, "rb") as _rx, os.fdopen(fd_out, "wb") as _tx:
        worker_main(_rx, _tx)
