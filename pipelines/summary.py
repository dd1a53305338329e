"""The end-of-run summary a console user can act on.

Read from the Dagster instance (materialisation metadata and check
evaluations of the runs a command started), so it reports exactly what the UI
shows: rows per stage per dataset, failed checks with why, the evaluation
figures, the registered version and whether it became champion, and where to
look next.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

# What each stage reports as its row counts, in the order shown.
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "seed_problems": ("rows_read", "accepted", "quarantined", "deduplicated", "decontaminated"),
    "policy_rollouts": ("problems", "rollouts", "skipped_prompts", "steps_per_solution", "accuracy"),
    "mc_step_labels": ("rollouts", "labelled", "skipped", "failed"),
    "judge_step_labels": ("rows", "verdicts_ok", "unparsed_share"),
    "consensus_labels": ("rollouts", "kept", "kept_share"),
}
EVAL_KEYS = ("mean_f1", "world_f1", "bon8_prm_min", "bon8_majority", "threshold", "steps_unscored", "unscored_share")


@dataclass
class RunSummary:
    """What a command's runs did, gathered from the instance."""

    rows: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (asset, partition) -> counts
    failed_checks: list[str] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    registered: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # step key -> wall seconds (summed over runs)

    def lines(self, tracking_uri: str | None = None) -> list[str]:
        """The summary as console lines."""
        out = ["summary:"]
        if self.rows:
            out.append("  rows per stage and dataset:")
            for (asset, partition), counts in sorted(self.rows.items(), key=lambda kv: (_order(kv[0][0]), kv[0][1])):
                shown = ", ".join(f"{k} {_fmt(v)}" for k, v in counts.items())
                out.append(f"    {asset}[{partition}]: {shown}")
        if self.evaluation:
            out.append("  evaluation: " + ", ".join(f"{k} {_fmt(v)}" for k, v in self.evaluation.items()))
        if self.seconds:
            out.append("  time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()))
        if self.registered:
            r = self.registered
            state = "became champion" if r.get("promoted") else "not champion"
            out.append(f"  registered: {r.get('model_uri', '?')} ({state}: {r.get('gate_reason', '')})")
        if self.failed_checks:
            out.append(f"  failed checks ({len(self.failed_checks)}):")
            out.extend(f"    {c}" for c in self.failed_checks)
        if self.failed_steps:
            out.append(f"  failed steps ({len(self.failed_steps)}):")
            out.extend(f"    {s}" for s in self.failed_steps)
        out.append("  look closer: `prmforge ui` (runs, checks, metadata)"
                   + (f"; `mlflow ui --backend-store-uri {tracking_uri}` (metrics, models)" if tracking_uri else ""))
        return out


def _order(asset: str) -> int:
    keys = [*ROW_KEYS, "prm_model", "prm_evaluation", "registered_prm"]
    return keys.index(asset) if asset in keys else len(keys)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) and not float(value).is_integer() else str(
        int(value) if isinstance(value, float) else value)


def _value(meta: dict[str, Any], key: str) -> Any:
    v = meta.get(key)
    return getattr(v, "value", v)


def summarize_runs(instance: dg.DagsterInstance, run_ids: Iterable[str]) -> RunSummary:
    """Gather the summary of ``run_ids`` (later materialisations of a key win)."""
    summary = RunSummary()
    for run_id in run_ids:
        started: dict[str, float] = {}
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START and event.step_key:
                started[event.step_key] = record.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE) \
                    and event.step_key in started:
                key = event.step_key
                summary.seconds[key] = summary.seconds.get(key, 0.0) + record.timestamp - started.pop(key)
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                _materialization(summary, event.event_specific_data.materialization)
            elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
                _check(summary, event.event_specific_data)
            elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
                error = event.event_specific_data.error
                text = (error.message if error is not None else event.message) or ""
                summary.failed_steps.append(f"{event.step_key}: {text.strip().splitlines()[0][:300] if text else ''}")
    return summary


def _materialization(summary: RunSummary, mat: dg.AssetMaterialization) -> None:
    asset = mat.asset_key.to_user_string()
    meta = dict(mat.metadata)
    if asset in ROW_KEYS:
        counts = {k: _value(meta, k) for k in ROW_KEYS[asset] if k in meta}
        if counts:
            summary.rows[(asset, mat.partition or "-")] = counts
    elif asset == "prm_evaluation":
        summary.evaluation = {k: _value(meta, k) for k in EVAL_KEYS if k in meta}
    elif asset == "registered_prm":
        summary.registered = {k: _value(meta, k) for k in ("model_uri", "version", "promoted", "gate_reason")
                              if k in meta}


def _check(summary: RunSummary, evaluation: Any) -> None:
    if evaluation.passed:
        return
    meta = dict(evaluation.metadata)
    why = _value(meta, "failed") or _value(meta, "reason") or ", ".join(
        f"{k}={_value(meta, k)}" for k in list(meta)[:4])
    where = evaluation.asset_key.to_user_string() + (f"[{evaluation.partition}]" if evaluation.partition else "")
    summary.failed_checks.append(f"{where} {evaluation.check_name}: {str(why)[:300]}")


def print_summary(say: Any, instance: dg.DagsterInstance, run_ids: Sequence[str], tracking_uri: str | None) -> None:
    """Write the summary of ``run_ids`` through ``say`` (the CLI's printer)."""
    for line in summarize_runs(instance, run_ids).lines(tracking_uri):
        say(line)
