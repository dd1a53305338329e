"""The vLLM worker process: the only module that imports ``vllm``.

It is started by :class:`prmforge.engines.vllm.VLLMEngine` with the ``spawn``
start method, so the parent never initialises CUDA and every byte of GPU
memory is returned to the system when the worker exits at the end of the step.
Protocol over a ``multiprocessing`` pipe (plain dicts/lists, JSON-compatible):

* first message from the worker: ``{"ok": True, "ready": True}`` or ``{"ok": False, "error": ...}``
* request ``{"op": "generate", "prompts": [...], "params": {...}}`` ->
  ``{"ok": True, "results": [[{text, prompt_tokens, completion_tokens, finish_reason}, ...], ...]}``
* request ``{"op": "close"}`` -> the worker exits.
"""

from __future__ import annotations

import traceback
from typing import Any


def _build_llm(cfg: dict[str, Any]):
    from vllm import LLM

    kwargs: dict[str, Any] = {
        "model": cfg["model"],
        "tensor_parallel_size": cfg.get("tensor_parallel_size", 1),
        "gpu_memory_utilization": cfg.get("gpu_memory_utilization", 0.85),
        "enable_prefix_caching": True,
        "trust_remote_code": bool(cfg.get("trust_remote_code", False)),
        "load_format": "safetensors",  # never unpickle weights
        "seed": 0,
    }
    if cfg.get("dtype") and cfg["dtype"] != "auto":
        kwargs["dtype"] = cfg["dtype"]
    if cfg.get("max_model_len"):
        kwargs["max_model_len"] = int(cfg["max_model_len"])
    if cfg.get("enforce_eager"):
        kwargs["enforce_eager"] = True
    return LLM(**kwargs)


def _generate(llm, prompts: list[str], p: dict[str, Any]) -> list[list[dict]]:
    from vllm import SamplingParams

    sp = SamplingParams(n=int(p["n"]), temperature=float(p["temperature"]), top_p=float(p["top_p"]),
                        max_tokens=int(p["max_tokens"]), seed=int(p["seed"]), stop=list(p.get("stop") or []) or None)
    outs = llm.generate(prompts, sp, use_tqdm=False)
    results = []
    for o in outs:
        prompt_tokens = len(o.prompt_token_ids or [])
        row = []
        for c in sorted(o.outputs, key=lambda c: c.index):
            reason = "length" if c.finish_reason == "length" else "stop"
            row.append({"text": c.text, "prompt_tokens": prompt_tokens, "completion_tokens": len(c.token_ids),
                        "finish_reason": reason})
        results.append(row)
    return results


def worker_main(conn, cfg: dict[str, Any]) -> None:
    """Entry point of the spawned process."""
    try:
        llm = _build_llm(cfg)
    except BaseException as exc:  # report any start-up failure (no vllm, no GPU, bad model)
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]})
        conn.close()
        return
    conn.send({"ok": True, "ready": True})
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg.get("op") == "close":
            break
        try:
            conn.send({"ok": True, "results": _generate(llm, msg["prompts"], msg["params"])})
        except BaseException as exc:
            conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]})
    conn.close()
