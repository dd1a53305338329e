"""Evaluate any PRM folder on ProcessBench files: ``prmforge evaluate --prm ... --processbench ...``.

Why: a PRM trained here should be comparable with one from elsewhere on the same
files with the same metric. Two layouts are read today: this project's folder
(``prm_config.json`` + ``prm_head.safetensors``) and ``Qwen2ForProcessRewardModel``
(the export of :mod:`prmforge.prm.export`, the layout of Qwen's PRMs). Both score
the same token ids (problem, then ``step <step token>`` per step); with
``backend="vllm"`` a Qwen2 PRM (or a project PRM's ``qwen2_prm/`` export) is scored
by vLLM's pooling runner instead of transformers.

Outputs: ``predictions.jsonl`` (``{"id", "subset", "pred"}``, pred = first step scored
below the threshold, -1 if none), ``step_scores.parquet`` and ``metrics.json``
(per-subset error/correct accuracy and F1, plus their unweighted mean).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from prmforge.errors import ConfigError
from prmforge.model_files import resolve_model_dir
from prmforge.prm.benchmarks import load_source
from prmforge.prm.export import EXPORT_INFO, QWEN2_PRM_ARCH
from prmforge.prm.metrics import Sample, predicted_first_error, processbench_report, step_scores_table
from prmforge.prm.model import CONFIG_FILE, EXPORT_DIR, ProcessRewardModel, score_steps

FORMATS = ("auto", "prmforge", "qwen2-prm")
QWEN_STEP_TOKEN = "<extra_0>"  # the step tag of Qwen's official PRMs


def detect_format(folder: Path) -> str:
    """``prmforge`` or ``qwen2-prm`` from the files in ``folder``; a clear error otherwise."""
    if (folder / CONFIG_FILE).is_file():
        return "prmforge"
    cfg_path = folder / "config.json"
    if cfg_path.is_file() and QWEN2_PRM_ARCH in json.loads(cfg_path.read_text()).get("architectures", []):
        return "qwen2-prm"
    raise ConfigError(f"{folder} is neither a prmforge PRM ({CONFIG_FILE}) nor a {QWEN2_PRM_ARCH} folder; "
                      "pass --format")


class Qwen2PRM(nn.Module):
    """``Qwen2ForProcessRewardModel`` in plain transformers: Qwen2 backbone + score MLP, softmax at step tags."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        from transformers import AutoModel

        self.backbone = AutoModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
        h = self.backbone.config.hidden_size
        self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))
        state = load_file(str(folder / "model.safetensors"))
        self.score.load_state_dict({k[len("score."):]: v for k, v in state.items() if k.startswith("score.")})
        self.eval()

    @torch.no_grad()
    def step_probs(self, ids: list[int], step_token_id: int) -> list[float]:
        x = torch.tensor([ids])
        probs = torch.softmax(self.score(self.backbone(input_ids=x).last_hidden_state), dim=-1)[0, :, 1]
        return [float(probs[i]) for i, t in enumerate(ids) if t == step_token_id]


def _qwen2_step_token(folder: Path, tokenizer) -> tuple[str, int, int, str]:
    info_path = folder / EXPORT_INFO
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        return info["step_token"], int(info["step_token_id"]), int(info["max_length"]), info["prompt_format"]
    tid = tokenizer.convert_tokens_to_ids(QWEN_STEP_TOKEN)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ConfigError(f"{folder}: no {EXPORT_INFO} and the tokenizer has no {QWEN_STEP_TOKEN}")
    return QWEN_STEP_TOKEN, int(tid), int(tokenizer.model_max_length or 4096), "raw"


def score_items(prm: str, items: Sequence[tuple[str, Sequence[str]]], fmt: str = "auto",
                backend: str = "hf") -> tuple[list[list[float]], str]:
    """Per-step P(correct) for ``(problem, steps)`` items, and the format that was read."""
    from transformers import AutoTokenizer

    from prmforge.prm.vllm_score import VLLMPRMScorer, encode_items, score_steps_vllm

    if fmt not in FORMATS or backend not in ("hf", "vllm"):
        raise ConfigError(f"format must be one of {FORMATS} and backend hf or vllm, got {fmt!r}, {backend!r}")
    folder = resolve_model_dir(prm)
    if not isinstance(folder, Path):
        raise ConfigError(f"{prm!r} is not a local folder or storage URI (hub ids: download it first)")
    fmt = detect_format(folder) if fmt == "auto" else fmt
    if fmt == "prmforge":
        if backend == "hf":
            model, tok = ProcessRewardModel.load(folder)
            return score_steps(model, tok, items), fmt
        if not (folder / EXPORT_DIR).is_dir():
            raise ConfigError(f"{prm}: backend vllm needs the {EXPORT_DIR}/ export (a standard head on a Qwen2 base)")
        folder = folder / EXPORT_DIR
    tok = AutoTokenizer.from_pretrained(folder)
    _, tid, max_len, prompt_format = _qwen2_step_token(folder, tok)
    if backend == "vllm":
        with VLLMPRMScorer(str(folder), tid, max_model_len=max_len) as scorer:
            return score_steps_vllm(scorer, tok, items, tid, max_len, prompt_format), fmt
    model = Qwen2PRM(folder)
    out = []
    for ids, dropped in encode_items(tok, items, tid, max_len, prompt_format):
        out.append(model.step_probs(ids, tid) + [math.nan] * dropped)
    return out, fmt


def evaluate_prm(prm: str, processbench: Sequence[str], out_dir: str | Path, fmt: str = "auto",
                 backend: str = "hf", threshold: float = 0.5, limit: int | None = None) -> dict:
    """Score every ProcessBench file with ``prm``, write the three outputs to ``out_dir``, return the metrics."""
    samples: list[Sample] = []
    for source in processbench:
        samples += load_source(source).samples[:limit]
    if not samples:
        raise ConfigError("no ProcessBench samples in " + ", ".join(processbench))
    scores, fmt = score_items(prm, [(s.problem, s.steps) for s in samples], fmt, backend)
    for s, sc in zip(samples, scores, strict=True):
        s.scores = sc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl").open("w") as f:
        for s in samples:
            f.write(json.dumps({"id": s.id, "subset": s.subset, "pred": predicted_first_error(s.scores, threshold)})
                    + "\n")
    import pyarrow.parquet as pq

    pq.write_table(step_scores_table({"test": samples}), out / "step_scores.parquet")
    metrics = {"prm": prm, "format": fmt, "backend": backend, "threshold": threshold,
               "processbench": processbench_report(samples, threshold)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
