"""Consensus filtering of MC and judge labels and its validation (the exports: ``prmforge.labeling.exports``).

Why consensus: Monte Carlo estimation mislabels steps (a lucky completion
rescues a wrong step, an unlucky K misses a right one) and a judge misses
errors it cannot see (the calculator sees only arithmetic). Qwen's "Lessons
of Developing PRMs" keeps only the samples on which both agree; they kept
about 40% and trained better PRMs on less data. A rollout is kept when the MC
first-error index equals the judge's (-1 and -1 agree).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from prmforge.labeling.mc import labels_for
from prmforge.labeling.soft import CONSENSUS_LABELER, advantages, mc_labeler, soft_labels

CONSENSUS_SCHEMA = pa.schema(
    [
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("rollout_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("steps", pa.list_(pa.string()), nullable=False),
        pa.field("labels", pa.list_(pa.bool_()), nullable=False),
        pa.field("first_error", pa.int64(), nullable=False),
        pa.field("mc_mode", pa.string(), nullable=False),
        pa.field("k", pa.int64(), nullable=False),
        pa.field("judge", pa.string(), nullable=False),
        # soft labels (prmforge.labeling.soft states the conventions), one per kept step
        pa.field("soft_labels", pa.list_(pa.float64()), nullable=False),  # training target of label_kind soft
        pa.field("step_values", pa.list_(pa.float64()), nullable=False),  # MC value; null = not probed
        pa.field("step_k", pa.list_(pa.int64()), nullable=False),
        pa.field("prefix_value", pa.float64()),
        pa.field("step_advantages", pa.list_(pa.float64()), nullable=False),
        # provenance: who labelled the row, with what
        pa.field("labeler", pa.string(), nullable=False),  # consensus
        pa.field("mc_labeler", pa.string(), nullable=False),  # mc_per_step | mc_binary (+ strategies)
        pa.field("seed", pa.int64()),  # MC sampling seed
        pa.field("engine", pa.string()),  # MC engine backend
        pa.field("model", pa.string()),  # MC policy model
        pa.field("model_hash", pa.string()),
        pa.field("judge_identity", pa.string()),
        pa.field("judge_status", pa.string(), nullable=False),
        pa.field("judge_verdict", pa.int64()),  # the judge's first error (equals first_error when kept)
    ]
)

# disagreement categories (every dropped rollout lands in exactly one)
MC_EARLIER = "mc_earlier"
MC_LATER = "mc_later"
MC_SAYS_NO_ERROR = "mc_says_no_error"
JUDGE_SAYS_NO_ERROR = "judge_says_no_error"
JUDGE_UNPARSED = "judge_unparsed"  # judge status unparsed / abstain / error
MC_FAILED = "mc_failed"  # MC status not ok (engine failures, empty rollout)
MISSING = "missing_verdict"  # a rollout one side never saw
SKIPPED = "skipped_prompt"  # the prompt (rollouts stage) or an MC prefix was longer than the model's context
CATEGORIES = (MC_EARLIER, MC_LATER, MC_SAYS_NO_ERROR, JUDGE_SAYS_NO_ERROR, JUDGE_UNPARSED, MC_FAILED, MISSING,
              SKIPPED)


def classify(mc_status: str | None, mc_fe: int | None, judge_status: str | None, judge_fe: int | None) -> str | None:
    """None if the rollout is kept, else its disagreement category."""
    if mc_status is None or judge_status is None:
        return MISSING
    if mc_status == "skipped" or judge_status == "skipped":
        return SKIPPED
    if mc_status != "ok":
        return MC_FAILED
    if judge_status != "ok" or judge_fe is None:
        return JUDGE_UNPARSED
    assert mc_fe is not None
    if mc_fe == judge_fe:
        return None
    if mc_fe == -1:
        return MC_SAYS_NO_ERROR
    if judge_fe == -1:
        return JUDGE_SAYS_NO_ERROR
    return MC_EARLIER if mc_fe < judge_fe else MC_LATER


@dataclass
class ConsensusResult:
    table: pa.Table
    total: int
    kept: int
    breakdown: dict[str, int] = field(default_factory=dict)
    judge_status: dict[str, int] = field(default_factory=dict)

    @property
    def kept_share(self) -> float:
        return self.kept / self.total if self.total else 0.0


def build_consensus(mc: pa.Table, judge: pa.Table, judge_name: str) -> ConsensusResult:
    """Join MC and judge verdicts by ``rollout_id`` and keep the agreeing rollouts.

    ``mc`` needs ``rollout_id, problem_id, dataset, prompt, steps, status,
    first_error, mc_mode, k``; ``judge`` needs ``rollout_id, status,
    first_error``. Duplicate rollout ids on either side are an error: a row
    must trace back to exactly one rollout.
    """
    mc_rows = mc.to_pylist()
    judge_rows = judge.to_pylist()
    for name, rows in (("mc_step_labels", mc_rows), ("judge_step_labels", judge_rows)):
        dup = [k for k, c in Counter(r["rollout_id"] for r in rows).items() if c > 1]
        if dup:
            raise ValueError(f"{name} has duplicate rollout ids, e.g. {dup[:3]}")
    by_id = {r["rollout_id"]: r for r in judge_rows}
    kept: list[dict] = []
    breakdown = Counter({c: 0 for c in CATEGORIES})
    judge_status = Counter(r["status"] for r in judge_rows)
    ids = [r["rollout_id"] for r in mc_rows] + [rid for rid in by_id if rid not in {r["rollout_id"] for r in mc_rows}]
    mc_by_id = {r["rollout_id"]: r for r in mc_rows}
    for rid in ids:
        m = mc_by_id.get(rid)
        j = by_id.get(rid)
        cat = classify(m and m["status"], m and m["first_error"], j and j["status"], j and j["first_error"])
        if cat is not None:
            breakdown[cat] += 1
            continue
        assert m is not None
        fe = int(m["first_error"])
        labels = labels_for(fe, len(m["steps"]))
        n = len(labels)
        values = list(m.get("step_values") or [None] * len(m["steps"]))[:n]
        kept.append({
            "problem_id": m["problem_id"],
            "rollout_id": rid,
            "dataset": m["dataset"],
            "prompt": m["prompt"],
            "steps": list(m["steps"])[: len(labels)],
            "labels": labels,
            "first_error": fe,
            "mc_mode": m["mc_mode"],
            "k": int(m["k"]),
            "judge": judge_name,
            "soft_labels": soft_labels(labels, values),
            "step_values": values,
            "step_k": list(m.get("step_k") or [0] * len(m["steps"]))[:n],
            "prefix_value": m.get("prefix_value"),
            "step_advantages": advantages(values, m.get("prefix_value")),
            "labeler": CONSENSUS_LABELER,
            "mc_labeler": m.get("labeler") or mc_labeler(m["mc_mode"]),
            **{key: m.get(key) for key in ("seed", "engine", "model", "model_hash")},
            "judge_identity": j.get("judge_identity") if j else None,
            "judge_status": j["status"] if j else "missing",
            "judge_verdict": j["first_error"] if j else None,
        })
    table = pa.Table.from_pylist(kept, schema=CONSENSUS_SCHEMA)
    return ConsensusResult(table, total=len(ids), kept=len(kept), breakdown=dict(breakdown),
                           judge_status=dict(judge_status))


# ---------------------------------------------------------------------------
# validation (used by the blocking asset checks)
# ---------------------------------------------------------------------------
@dataclass
class Validation:
    labels_match_steps: list[str]
    label_after_negative: list[str]
    duplicate_ids: list[str]
    untraceable: list[str]

    @property
    def ok(self) -> bool:
        return not (self.labels_match_steps or self.label_after_negative or self.duplicate_ids or self.untraceable)


def validate_consensus(table: pa.Table, rollout_ids: Iterable[str] | None = None) -> Validation:
    """Every rule the blocking checks enforce, with the offending rollout ids.

    * ``len(labels) == len(steps)`` (later steps were dropped, not left unlabelled);
    * no label after the first negative (a negative is always the last label);
    * ``rollout_id`` unique;
    * every row traces back to exactly one rollout of ``rollout_ids``
      (the ``policy_rollouts`` / ``mc_step_labels`` ids), when given.
    """
    rows = table.select(["rollout_id", "steps", "labels"]).to_pylist()
    mismatch = [r["rollout_id"] for r in rows if len(r["labels"] or []) != len(r["steps"] or [])]
    after = []
    for r in rows:
        labels = list(r["labels"] or [])
        if False in labels and labels.index(False) != len(labels) - 1:
            after.append(r["rollout_id"])
    counts = Counter(r["rollout_id"] for r in rows)
    dups = sorted(k for k, c in counts.items() if c > 1)
    untraceable: list[str] = []
    if rollout_ids is not None:
        source = Counter(rollout_ids)
        untraceable = sorted(r["rollout_id"] for r in rows if source.get(r["rollout_id"], 0) != 1)
    return Validation(mismatch, after, dups, untraceable)
