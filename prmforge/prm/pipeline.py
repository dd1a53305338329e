"""End-to-end PRM steps used by the Dagster assets and the ``torchrun`` CLI.

``fit`` turns label rows into a saved PRM folder (resumable through storage
checkpoints); ``evaluate`` scores ProcessBench-format benchmarks and Best-of-N
candidates sampled from the policy, and writes the figures and plots.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from prmforge.checks import CheckOutcome, model_folder_outcome, training_outcomes
from prmforge.engines.factory import EngineConfig
from prmforge.errors import ConfigError
from prmforge.prm.benchmarks import load_source
from prmforge.prm.data import EncodeStats, encode_dataset
from prmforge.prm.metrics import (
    Candidate,
    Sample,
    best_of_n,
    bon_curve,
    choose_threshold,
    min_on_last_step_share,
    plot_bon_curve,
    plot_calibration,
    processbench_report,
    rawp_detection,
    split_calibration,
    step_calibration,
    step_scores_table,
    summary_markdown,
    unscored_report,
)
from prmforge.prm.model import ProcessRewardModel, build_prm, score_steps
from prmforge.prm.settings import PRMEvalSettings, PRMTrainSettings
from prmforge.prm.train import CheckpointStore, TrainResult, total_steps, train_prm
from prmforge.progress import ProgressLog
from prmforge.sharding import fingerprint

# Targets of the world profile (issue: F1 >= 0.80; BoN@8 >= majority@8 + 5 points).
TARGET_WORLD_F1 = 0.80
TARGET_BON_MARGIN = 0.05


@dataclass
class FitResult:
    model: ProcessRewardModel
    tokenizer: object
    stats: EncodeStats
    train: TrainResult
    run_key: str

    def checks(self, rows: int, uri: str) -> list[CheckOutcome]:
        """``training_sane``, ``loss_decreased`` and ``model_complete`` of the stored model at ``uri``."""
        s = self.stats
        return [*training_outcomes(self.train.history, self.train.final_loss, rows, s.examples_in,
                                   s.examples_kept, s.rejected), model_folder_outcome(uri)]

    def metadata(self) -> dict[str, object]:
        """Encoding and training figures of the ``prm_model`` materialisation (plain values)."""
        return {
            "encode_stats": self.stats.as_dict(),
            "train_steps": self.train.steps,
            "resumed_from_step": self.train.resumed_from,
            "final_loss": round(self.train.final_loss, 5),
            "tokens_per_s": round(self.train.tokens_per_s, 1),
            "train_seconds": round(self.train.seconds, 1),
        }


def select_rows(table: pa.Table, datasets: Sequence[str] | None) -> list[dict]:
    """Rows of the configured dataset partitions (all when ``datasets`` is None)."""
    if datasets is not None and "dataset" in table.column_names:
        wanted = set(datasets)
        rows = [r for r in table.to_pylist() if r["dataset"] in wanted]
    else:
        rows = table.to_pylist()
    return rows


def training_rows(rows: Sequence[dict], label_kind: str) -> list[dict]:
    """The rows with the labels ``label_kind`` trains on: ``soft`` puts the MC values (``soft_labels``) in ``labels``.

    Rows without soft labels (labelled before they existed) are a clear
    error, never a silent fallback to hard labels. So are rows labelled with
    adaptive sampling: it stops a prefix at its first right completion, so
    its values overstate and are no target for a value regression.
    """
    if label_kind == "hard":
        return list(rows)
    missing = sum(1 for r in rows if r.get("soft_labels") is None)
    if missing:
        raise ValueError(f"label_kind 'soft': {missing} of {len(rows)} label rows have no soft_labels; "
                         "rematerialise mc_step_labels and consensus_labels")
    adaptive = sum(1 for r in rows if "adaptive" in (r.get("mc_labeler") or ""))
    if adaptive:
        raise ConfigError(f"label_kind 'soft': {adaptive} of {len(rows)} label rows come from adaptive MC sampling, "
                          "whose values overstate; relabel with mc_step_labels adaptive: false or train "
                          "label_kind: hard")
    return [{**r, "labels": r["soft_labels"]} for r in rows]


def fit(
    rows: Sequence[dict],
    s: PRMTrainSettings,
    base_model: str,
    storage=None,
    data_version: str = "",
    log_fn: Callable[[dict[str, float], int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Build a PRM on ``base_model``, encode ``rows`` and train (resuming from storage checkpoints).

    ``log_fn`` gets each optimizer step's metrics (MLflow); ``log`` gets progress
    lines with rate and ETA (the Dagster run's log).

    The checkpoint run key hashes the settings, base model and data version, so a
    changed input never resumes from a stale checkpoint.
    """
    model, tok = build_prm(base_model, head=s.head, max_length=s.max_length, seed=s.seed,
                           trust_remote_code=s.trust_remote_code, step_token_init=s.step_token_init,
                           surprisal=s.surprisal, head_hidden=s.head_hidden,
                           surprisal_reference=s.surprisal_reference, standard=s.head_kind == "standard",
                           step_separator=s.step_separator, hidden_state=s.hidden_state)
    examples, stats = encode_dataset(tok, training_rows(rows, s.label_kind), model.config.step_token_id,
                                     model.config.max_length, separator=model.config.step_separator)
    run_key = "prm-" + fingerprint({"settings": s.model_dump(), "base": base_model, "data": data_version})
    store = CheckpointStore(storage, run_key) if storage is not None else None
    progress = ProgressLog("PRM training", total_steps(len(examples), s), log) if log else None

    def on_metrics(metrics: dict[str, float], step: int) -> None:
        if log_fn is not None:
            log_fn(metrics, step)
        if progress is not None:
            progress.update(step, f"loss {metrics['loss']:.4f}")

    result = train_prm(model, examples, s, tok.pad_token_id, checkpoints=store, log_fn=on_metrics)
    return FitResult(model, tok, stats, result, run_key)


# ---- evaluation -------------------------------------------------------------------
@dataclass
class EvalReport:
    threshold: float
    calibration_report: dict[str, dict[str, float]]
    report: dict[str, dict[str, float]]
    bon: dict[str, float]
    curve: dict[int, dict[str, float]]
    diagnostics: dict[str, float]
    rejected: dict[str, int]
    plots: list[str] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)
    unscored: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    step_scores: pa.Table | None = None  # prm_step_scores: every benchmark step's score
    samples_per_subset: dict[str, int] = field(default_factory=dict)  # what was scored, after any subsampling

    def flat_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"threshold": self.threshold}
        for subset, r in self.report.items():
            for k in ("error_acc", "correct_acc", "f1", "n_error", "n_correct"):
                if k in r:
                    out[f"{subset}_{k}"] = r[k]
        for subset, u in self.unscored.items():
            out[f"{subset}_steps_unscored"] = u["unscored"]
            out[f"{subset}_unscored_share"] = u["unscored_share"]
        out.update({f"bon{self.counts.get('bon_n', 0):.0f}_{k}": v for k, v in self.bon.items()})
        out.update(self.diagnostics)
        out.update(self.counts)
        return out

    def markdown(self) -> str:
        return summary_markdown(self.report, self.threshold, self.bon, self.diagnostics, self.notes)

    def targets(self) -> dict[str, object]:
        """Whether the world profile's targets are met (only those that were measured), with a note if not."""
        out: dict[str, object] = {}
        world_f1 = self.report.get("world", {}).get("f1")
        if world_f1 is not None:
            out["target_world_f1_met"] = bool(world_f1 >= TARGET_WORLD_F1)
        if self.bon:
            out["target_bon_met"] = bool(self.bon["prm_min"] >= self.bon["majority"] + TARGET_BON_MARGIN)
        if out and not all(out.values()):
            nan = float("nan")
            out["target_note"] = (
                f"measured world F1 {world_f1 if world_f1 is not None else nan:.3f} (target {TARGET_WORLD_F1}), "
                f"BoN min {self.bon.get('prm_min', nan):.3f} vs majority {self.bon.get('majority', nan):.3f}"
                "; the main limit is labelled-data volume and policy quality (see docs/prm.md)")
        return out


def model_context(model: ProcessRewardModel) -> int:
    """The most positions the PRM's backbone takes (its ``max_position_embeddings``), else its training length.

    Evaluation scores with the full context, not the (often shorter) length the
    PRM was trained with: a step cut off is a step never scored.
    """
    cfg = getattr(model.backbone, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        limit = getattr(cfg, name, None)
        if isinstance(limit, int) and limit > 0:
            return limit
    return model.config.max_length


def _limit(samples: list[Sample], n: int | None, seed: int) -> list[Sample]:
    """At most ``n`` samples per subset (seeded), or all of them when ``n`` is None (the default)."""
    if n is None:
        return samples
    out: list[Sample] = []
    for subset in sorted({s.subset for s in samples}):
        group = [s for s in samples if s.subset == subset]
        random.Random(f"{seed}:{subset}").shuffle(group)
        out += group[:n]
    return out


def bon_problems(world_table: pa.Table, s: PRMEvalSettings) -> list[dict]:
    """``bon_problems`` distinct held-out world problems (seeded), one row each, with their answers."""
    seen: dict[str, dict] = {}
    for row in world_table.to_pylist():
        pid = str(row.get("problem_id") or row.get("id"))
        if pid not in seen and row.get("answer") is not None:
            seen[pid] = row
    problems = sorted(seen.values(), key=lambda r: str(r.get("problem_id")))
    random.Random(s.seed).shuffle(problems)
    return problems[: s.bon_problems]


def sample_bon(policy_engine: EngineConfig, problems: Sequence[dict], s: PRMEvalSettings,
               prompt: Callable[[str], str]) -> list[list[tuple[list[str], str | None, bool]]]:
    """N policy samples per problem as ``(steps, extracted answer, correct)``; errors become wrong candidates.

    Sampled through the configured policy engine (hf, vllm or openai), the one
    the rollouts use, with the policy's prompt (``prompt``: the world prompt, in
    the embedded policy's chat template), so Best-of-N sees the policy the PRM
    was trained for.
    """
    from prmforge.answers import grade
    from prmforge.engines.base import SamplingParams
    from prmforge.engines.factory import make_engine
    from prmforge.steps import split_steps
    from prmforge.world import STEP_SEPARATOR

    engine = make_engine(policy_engine.model_copy(update={"batch_size": s.engine_batch_size}))
    try:
        outs = engine.generate([prompt(p["problem"]) for p in problems],
                               SamplingParams(n=s.bon_n, temperature=s.bon_temperature, max_tokens=s.bon_max_tokens,
                                              seed=s.seed))
    finally:
        engine.close()
    result = []
    for prob, comps in zip(problems, outs, strict=True):
        cands = []
        for c in comps:
            if c.error:
                cands.append(([], None, False))
                continue
            answer, correct = grade(c.text, str(prob["answer"]))
            cands.append((split_steps(c.text, STEP_SEPARATOR), answer, bool(correct)))
        result.append(cands)
    return result


class StepScorer:
    """Scores ``(problem, steps)`` items with the evaluated PRM through the configured backend.

    ``hf`` is :func:`prmforge.prm.model.score_steps`; ``vllm`` runs vLLM's pooling runner
    on the PRM's ``qwen2_prm/`` export in a worker process (started once, on first use,
    for both the benchmark and Best-of-N, and shut down on ``close``), fed the token ids
    ``score_steps`` would see, so the two backends score identical inputs.
    """

    def __init__(self, model: ProcessRewardModel, tokenizer, s: PRMEvalSettings, prm_folder: str | Path | None,
                 max_length: int) -> None:
        from prmforge.prm.model import EXPORT_DIR

        self.model, self.tokenizer, self.s, self.max_length = model, tokenizer, s, max_length
        self.export: Path | None = None
        self._vllm = None
        if s.backend == "vllm":
            export = Path(prm_folder) / EXPORT_DIR if prm_folder is not None else None
            if export is None or not (export / "config.json").is_file():
                raise ValueError("prm_evaluation backend vllm needs the PRM's qwen2_prm/ export: train it with "
                                 "head_kind: standard on a Qwen2 base model (or use backend hf)")
            self.export = export

    def __call__(self, items: Sequence[tuple[str, Sequence[str]]], max_length: int | None = None,
                 backend: str | None = None) -> list[list[float]]:
        """P(correct) per step (NaN past ``max_length``, default the scoring context)."""
        max_length = max_length or self.max_length
        if (backend or self.s.backend) == "hf":
            return score_steps(self.model, self.tokenizer, items, batch_size=self.s.score_batch_size,
                               max_length=max_length)
        from prmforge.prm.vllm_score import VLLMPRMScorer, score_steps_vllm

        cfg = self.model.config
        if self._vllm is None:
            self._vllm = VLLMPRMScorer(str(self.export), cfg.step_token_id, max_model_len=self.max_length,
                                       cpu_kv_cache_gib=self.s.vllm_kv_cache_gib)
        return score_steps_vllm(self._vllm, self.tokenizer, items, cfg.step_token_id, min(max_length, self.max_length),
                                cfg.prompt_format)

    def close(self) -> None:
        """Shut the vLLM worker down (if one was started)."""
        if self._vllm is not None:
            self._vllm.close()
            self._vllm = None


def parity(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> dict[str, float]:
    """Largest |a - b| over the steps both scored, and how many steps that was (NaN on either side skipped)."""
    diffs = [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)
             if x == x and y == y]
    return {"vllm_parity_max_abs_diff": max(diffs) if diffs else float("nan"),
            "vllm_parity_steps": float(len(diffs))}


def evaluate(
    model: ProcessRewardModel,
    tokenizer,
    s: PRMEvalSettings,
    out_dir: str | Path,
    world_table: pa.Table | None = None,
    policy_engine: EngineConfig | None = None,
    prm_folder: str | Path | None = None,
    policy_prompt: Callable[[str], str] | None = None,
) -> EvalReport:
    """ProcessBench-format figures per subset, Best-of-N and diagnostics; PNGs into ``out_dir``.

    Best-of-N needs ``policy_engine`` (the policy model on its configured backend), ``policy_prompt``
    (its prompt builder, ``prmforge.prompts.policy_prompt``) and ``world_table``.
    ``prm_folder`` is the PRM's local folder, needed by ``backend: vllm`` (its ``qwen2_prm/``).
    Best-of-N candidates are sampled before any step is scored, so a vLLM policy engine and
    a vLLM PRM scorer never hold memory at the same time.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    rejected: dict[str, int] = {}
    for source in s.benchmarks:
        loaded = load_source(source, world_table)
        samples += loaded.samples
        for k, v in loaded.rejected.items():
            rejected[k] = rejected.get(k, 0) + v
    available = {name: sum(x.subset == name for x in samples) for name in sorted({x.subset for x in samples})}
    samples = _limit(samples, s.max_samples_per_subset, s.seed)
    notes: list[str] = []
    if s.max_samples_per_subset is not None and any(n > s.max_samples_per_subset for n in available.values()):
        notes.append(f"subsampled: at most {s.max_samples_per_subset} samples per subset (max_samples_per_subset; "
                     + ", ".join(f"{k} {min(n, s.max_samples_per_subset)} of {n}" for k, n in available.items()) + ")")
    max_length = s.max_length or model_context(model)
    problems: list[dict] = []
    sampled: list[list[tuple[list[str], str | None, bool]]] = []
    if (policy_engine is not None and policy_prompt is not None and world_table is not None
            and s.bon_problems > 0 and s.bon_n > 0):
        problems = bon_problems(world_table, s)
        sampled = sample_bon(policy_engine, problems, s, policy_prompt)
    scorer = StepScorer(model, tokenizer, s, prm_folder, max_length)
    try:
        items = [(x.problem, x.steps) for x in samples]
        scores = scorer(items)
        vllm_parity = parity(scores, scorer(items, backend="hf")) if s.backend == "vllm" else {}
        flat = [(p["problem"], steps) for p, cands in zip(problems, sampled, strict=True) for steps, _, _ in cands]
        # Best-of-N keeps the PRM's training length, as before the backend setting (scores unchanged on hf).
        flat_scores = scorer(flat, max_length=model.config.max_length) if flat else []
    finally:
        scorer.close()
    for x, sc in zip(samples, scores, strict=True):
        x.scores = sc
    unscored = unscored_report(samples)
    if unscored["all"]["unscored"]:
        u = unscored["all"]
        notes.append(f"{u['unscored']:.0f} of {u['steps']:.0f} steps ({u['unscored_share']:.1%}) in "
                     f"{u['samples_with_unscored']:.0f} samples did not fit the PRM's context ({max_length} tokens) "
                     "and were not scored (counted as predicted errors)")
    calib, test = split_calibration(samples, s.threshold_split, s.seed)
    threshold = choose_threshold(calib) if calib else 0.5
    report = processbench_report(test, threshold)
    baseline = random_scorer_report(calib, test, s.seed)
    diagnostics = {
        "min_on_last_step_share": min_on_last_step_share(test),
        "min_on_last_step_share_erroneous": min_on_last_step_share([x for x in test if x.label >= 0]),
    }
    rawp = rawp_detection(test, threshold)
    diagnostics.update({"rawp_n": rawp["n"], "rawp_flagged": rawp["flagged"], "rawp_exact": rawp["exact"]})
    cal = step_calibration(test)
    diagnostics["step_ece"] = float(cal["ece"])
    plots = [plot_calibration(cal, str(out_dir / "calibration.png"))]
    (out_dir / "calibration.json").write_text(json.dumps(cal))
    bon: dict[str, float] = {}
    curve: dict[int, dict[str, float]] = {}
    counts = {"samples_test": float(len(test)), "samples_calibration": float(len(calib)),
              "steps_total": unscored["all"]["steps"], "steps_unscored": unscored["all"]["unscored"],
              "unscored_share": unscored["all"]["unscored_share"], "scoring_max_length": float(max_length),
              "samples_available": float(sum(available.values())), "bon_n": float(s.bon_n)}
    if sampled:
        it = iter(flat_scores)
        bon_cands = [[Candidate(ans, ok, next(it)) for _steps, ans, ok in cands] for cands in sampled]
        # An empty candidate (engine error) has no steps: its score list is empty → never picked.
        bon = best_of_n(bon_cands, s.bon_n)
        curve = bon_curve(bon_cands, s.bon_n)
        plots.append(plot_bon_curve(curve, str(out_dir / "bon_vs_n.png")))
        counts["bon_problems"] = float(len(bon_cands))
    counts.update(vllm_parity)
    for subset, r in baseline.items():
        diagnostics[f"random_scorer_{subset}_f1"] = r["f1"]
    if "mean" in report and "mean" in baseline:
        diagnostics["beats_random_scorer"] = float(report["mean"]["f1"] > baseline["mean"]["f1"])
    scored = {name: sum(x.subset == name for x in samples) for name in sorted({x.subset for x in samples})}
    return EvalReport(threshold, processbench_report(calib, threshold), report, bon, curve, diagnostics, rejected,
                      plots, counts, {k: v for k, v in unscored.items() if k != "all"}, notes,
                      step_scores_table({"calibration": calib, "test": test}), scored)


def random_scorer_report(calib: Sequence[Sample], test: Sequence[Sample], seed: int) -> dict[str, dict[str, float]]:
    """ProcessBench figures of a seeded uniform-random step scorer, its threshold tuned the same way.

    The demo's only quality bar is beating this baseline, so it is computed with
    the identical protocol (threshold on the calibration split, figures on test).
    """
    rng = random.Random(f"random-scorer:{seed}")

    def rand(samples: Sequence[Sample]) -> list[Sample]:
        return [Sample(x.id, x.subset, x.steps, x.label, x.final_answer_correct, [rng.random() for _ in x.steps],
                       x.group, x.problem) for x in samples]

    rc, rt = rand(calib), rand(test)
    return processbench_report(rt, choose_threshold(rc) if rc else 0.5)
