"""The vLLM PRM scoring worker: a fresh interpreter that owns one pooling-runner ``LLM``.

Started by :class:`prmforge.prm.vllm_score.VLLMPRMScorer` as
``python -m prmforge.prm.vllm_prm_worker FD_IN FD_OUT`` for the same reason as the
generation worker (:mod:`prmforge.engines.vllm_worker`, whose loop it shares):
vLLM's memory and its ``EngineCore`` processes are only reliably released when the
process that built the engine shuts it down and exits. Protocol (length-prefixed JSON):

* ``{"op": "start", "cfg": {"model", "pooling", "step_tag_id", "returned_token_ids", "convert",
  "hf_overrides", "label_index", "max_model_len", "cpu_kv_cache_gib", "dtype"}}``
  -> ``{"ok": True, "platform": ...}`` or ``{"ok": False, "error": ...}``
* ``{"op": "score", "token_ids": [[...], ...], "positions": [[...], ...] | None}`` ->
  ``{"ok": True, "probs": [[p_correct per step], ...]}``. With STEP pooling vLLM
  returns one row per step tag; with ALL pooling one row per token, and the worker
  keeps the rows at ``positions`` (the last token of each step).
* ``{"op": "close"}`` or EOF -> the engine core is shut down and the worker exits.

Prompts are token ids (``TokensPrompt``), never text: vLLM's own tokenisation of a
text can differ from the one the reference used (docs/prm.md, parity).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from prmforge.engines.vllm_worker import serve

GiB = 1 << 30


def _build(cfg: dict[str, Any]):
    from vllm import LLM
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    pooler: dict[str, Any] = {"pooling_type": cfg.get("pooling") or "STEP", "task": "token_classify"}
    if cfg.get("step_tag_id") is not None:
        pooler["step_tag_id"] = int(cfg["step_tag_id"])
    if cfg.get("returned_token_ids"):
        pooler["returned_token_ids"] = [int(i) for i in cfg["returned_token_ids"]]
    kwargs: dict[str, Any] = {
        "model": cfg["model"], "runner": "pooling", "load_format": "safetensors", "seed": 0,
        "trust_remote_code": False, "enforce_eager": bool(cfg.get("enforce_eager", False)),
        "pooler_config": pooler, "dtype": cfg.get("dtype") or "float32",
    }
    if cfg.get("convert"):
        kwargs["convert"] = cfg["convert"]
    if cfg.get("hf_overrides"):
        kwargs["hf_overrides"] = dict(cfg["hf_overrides"])
    if cfg.get("max_model_len"):
        kwargs["max_model_len"] = int(cfg["max_model_len"])
    if on_cpu:
        kwargs["kv_cache_memory_bytes"] = int(float(cfg.get("cpu_kv_cache_gib", 1.0)) * GiB)
    return LLM(**kwargs), ("cpu" if on_cpu else current_platform.device_type)


def _score(llm, msg: dict[str, Any], label_index: int) -> dict[str, Any]:
    from vllm.inputs import TokensPrompt

    token_ids: list[list[int]] = msg["token_ids"]
    positions: list[list[int]] | None = msg.get("positions")
    outs = llm.encode([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], pooling_task="token_classify",
                      use_tqdm=False)
    result = []
    for i, o in enumerate(outs):
        data = o.outputs.data.float()
        if data.numel() == 0:  # no step token (a candidate without steps): no scores
            result.append([])
            continue
        rows = data.reshape(data.shape[0], -1) if data.dim() > 1 else data.reshape(-1, 2)
        if positions is not None:
            rows = rows[positions[i]]
        result.append([float(x) for x in rows[:, label_index]])
    return {"probs": result}


def worker_main(rx: IO[bytes], tx: IO[bytes]) -> None:
    """Serve one pooling engine: ``score`` requests until ``close`` or EOF (loop in ``engines.vllm_worker``)."""
    holder: dict[str, int] = {}

    def build(cfg: dict[str, Any]):
        holder["label_index"] = int(cfg.get("label_index", 1))
        return _build(cfg)

    serve(rx, tx, build, lambda llm, msg: _score(llm, msg, holder["label_index"]))


if __name__ == "__main__":
    fd_in, fd_out = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(fd_in, "rb") as _rx, os.fdopen(fd_out, "wb") as _tx:
        worker_main(_rx, _tx)
