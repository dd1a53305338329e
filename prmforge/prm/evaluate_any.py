"""Evaluate any PRM on ProcessBench files: ``prmforge evaluate --prm ... --processbench ...``.

Why: a PRM trained here should be comparable with one from elsewhere on the same
files with the same metric. Four layouts are read: this project's folder
(``prm_config.json`` + ``prm_head.safetensors``) and the three external ones of
:mod:`prmforge.prm.layouts` (``qwen2-prm``, ``math-shepherd``, ``token-classify``);
with ``backend="vllm"`` the external layouts (and a project PRM's ``qwen2_prm/``
export) are scored by vLLM's pooling runner instead of transformers. The PRM is a
local folder, a ``file://``/``s3://`` storage folder or a ``models:/`` registry URI
(:func:`prmforge.model_files.resolve_model_dir`).

Outputs: ``predictions.jsonl`` (``{"id", "subset", "pred"}``, pred = first step scored
below the threshold, -1 if none), ``step_scores.parquet`` and ``metrics.json``
(per-subset error/correct accuracy and F1, plus their unweighted mean; and per subset
the steps the PRM could not score because the solution did not fit its context, which
count as errors, with a warning above 1%). The same
figures are logged to MLflow as an evaluation run, tagged with the registered
model version when the PRM came from the registry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from prmforge.errors import ConfigError
from prmforge.model_files import registered_version, resolve_model_dir
from prmforge.prm.benchmarks import load_source
from prmforge.prm.layouts import detect_format, open_layout
from prmforge.prm.metrics import (
    Sample,
    predicted_first_error,
    processbench_report,
    step_scores_table,
    unscored_report,
)
from prmforge.prm.model import EXPORT_DIR, ProcessRewardModel, score_steps

FORMATS = ("auto", "prmforge", "qwen2-prm", "math-shepherd", "token-classify")
BACKENDS = ("hf", "vllm")
EVAL_EXPERIMENT = "prmforge-evaluate"

log = logging.getLogger(__name__)


def score_items(prm: str, items: Sequence[tuple[str, Sequence[str]]], fmt: str = "auto",
                backend: str = "hf") -> tuple[list[list[float]], str, str]:
    """Per-step P(correct) for ``(problem, steps)`` items, the format that was read and its prompt format.

    The prompt format says how the problem reached the PRM: ``chat`` (a ``qwen2-prm``
    checkpoint's chat template, as its model card), ``world`` (this project's policy
    prompt, as its PRM was trained) or ``raw`` (as is: a ``qwen2-prm`` checkpoint without
    a chat template, and the math-shepherd and token-classify layouts).
    """
    if fmt not in FORMATS or backend not in BACKENDS:
        raise ConfigError(f"format must be one of {FORMATS} and backend one of {BACKENDS}, got {fmt!r}, {backend!r}")
    folder = resolve_model_dir(prm)
    if not isinstance(folder, Path):
        raise ConfigError(f"{prm!r} is not a local folder, storage URI or models:/ URI, and hub ids are not "
                          "downloaded here (nothing downloads at run time): download it first and pass the folder")
    fmt = detect_format(folder) if fmt == "auto" else fmt
    if fmt == "prmforge":
        if backend == "hf":
            model, tok = ProcessRewardModel.load(folder)
            return score_steps(model, tok, items), fmt, model.config.prompt_format
        if not (folder / EXPORT_DIR).is_dir():
            raise ConfigError(f"{prm}: backend vllm needs the {EXPORT_DIR}/ export (a standard head on a Qwen2 base)")
        layout = open_layout(folder / EXPORT_DIR, "qwen2-prm")
    else:
        layout = open_layout(folder, fmt)
    if fmt == "qwen2-prm" and layout.prompt_format == "raw":
        log.warning("%s has no chat template: the problem and the tagged steps are fed as they are, not in the "
                    "chat format of Qwen2.5-Math-PRM's model card", folder)
    encoded = [layout.encode(problem, steps) for problem, steps in items]
    return (layout.vllm_scores(encoded) if backend == "vllm" else layout.hf_scores(encoded)), fmt, layout.prompt_format


def evaluate_prm(prm: str, processbench: Sequence[str], out_dir: str | Path, fmt: str = "auto",
                 backend: str = "hf", threshold: float = 0.5, limit: int | None = None,
                 log_mlflow: bool = True) -> dict:
    """Score every ProcessBench file with ``prm``, write the three outputs to ``out_dir``, return the metrics."""
    samples: list[Sample] = []
    for source in processbench:
        samples += load_source(source).samples[:limit]
    if not samples:
        raise ConfigError("no ProcessBench samples in " + ", ".join(processbench))
    scores, fmt, prompt_format = score_items(prm, [(s.problem, s.steps) for s in samples], fmt, backend)
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
    unscored = unscored_report(samples)
    if unscored["all"]["unscored_share"] > 0.01:
        u = unscored["all"]
        log.warning("%d of %d steps (%.1f%%) did not fit the PRM's context and count as errors", u["unscored"],
                    u["steps"], 100 * u["unscored_share"])
    metrics = {"prm": prm, "format": fmt, "prompt_format": prompt_format, "backend": backend, "threshold": threshold,
               "processbench": processbench_report(samples, threshold), "unscored": unscored}
    if prm.startswith("models:/"):
        name, version = registered_version(prm)
        metrics["model_name"], metrics["model_version"] = name, version
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if log_mlflow:
        metrics["mlflow_run_id"] = log_evaluation(metrics, out, processbench)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def log_evaluation(metrics: dict, out: Path, processbench: Sequence[str]) -> str:
    """Log an evaluation run (figures, the three files); tie it to the registered version if there is one.

    The run is tagged ``model_name``/``model_version`` and, for a registry PRM, the
    version gets ``evaluation.<files>.run_id`` and ``evaluation.<files>.mean_f1`` tags,
    so the registry shows how each version scored on which files.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from prmforge.env import default_tracking_uri

    uri = default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # the experiment by id, not set_experiment: the process's active experiment stays what it was
    exp = client.get_experiment_by_name(EVAL_EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(EVAL_EXPERIMENT)
    tags = {"stage": "evaluate", "prm": metrics["prm"], "format": metrics["format"], "backend": metrics["backend"],
            "prompt_format": metrics["prompt_format"]}
    version = metrics.get("model_version")
    if version:
        tags.update(model_name=metrics["model_name"], model_version=version)
    flat = {f"{subset}_{k}": float(v) for subset, r in metrics["processbench"].items() for k, v in r.items()}
    flat.update({f"{subset}_steps_{k}": float(v) for subset, r in metrics["unscored"].items() for k, v in r.items()})
    with mlflow.start_run(experiment_id=exp_id, run_name=f"evaluate {metrics['format']} {metrics['backend']}",
                          tags=tags) as run:
        mlflow.log_params({"threshold": metrics["threshold"], "processbench": ",".join(processbench)})
        mlflow.log_metrics({k: v for k, v in flat.items() if v == v})
        mlflow.log_artifacts(str(out), "evaluation")
    if version:
        files = "_".join(Path(p).stem for p in processbench)
        client.set_model_version_tag(metrics["model_name"], version, f"evaluation.{files}.run_id", run.info.run_id)
        mean_f1 = metrics["processbench"].get("mean", {}).get("f1")
        if mean_f1 is not None:
            client.set_model_version_tag(metrics["model_name"], version, f"evaluation.{files}.mean_f1",
                                         f"{mean_f1:.4f}")
    return run.info.run_id
