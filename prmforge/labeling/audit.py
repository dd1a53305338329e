"""Label audit against the world oracle: how right are MC-only, judge-only and consensus labels?

Only world datasets have ground truth: each seed row's ``meta`` holds the
problem's structure, from which ``oracle_first_error`` computes the true first
wrong step of any candidate solution. Labellers never see the oracle; this
module only measures them.

Per method it reports, over the rollouts that method gives a verdict on:

* ``exact``: share whose first-error index equals the oracle's (-1 included);
* ``precision`` / ``recall`` of the binary "has an error" call;
* ``n``: how many verdicts (coverage: MC and judge may abstain or fail,
  consensus keeps only agreements).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

TARGET_EXACT = 0.95


@dataclass
class MethodScore:
    n: int
    exact: float | None
    precision: float | None
    recall: float | None
    true_error_share: float | None


def score(pairs: list[tuple[int, int]]) -> MethodScore:
    """``pairs`` = (predicted first error, oracle first error)."""
    n = len(pairs)
    if not n:
        return MethodScore(0, None, None, None, None)
    exact = sum(p == o for p, o in pairs) / n
    tp = sum(p >= 0 and o >= 0 for p, o in pairs)
    pred_pos = sum(p >= 0 for p, _ in pairs)
    true_pos = sum(o >= 0 for _, o in pairs)
    return MethodScore(
        n=n,
        exact=exact,
        precision=(tp / pred_pos) if pred_pos else None,
        recall=(tp / true_pos) if true_pos else None,
        true_error_share=true_pos / n,
    )


def world_meta_by_problem(seed: pa.Table) -> dict[str, dict[str, Any]]:
    """``problem_id -> meta`` for seed rows that are world problems (others are skipped)."""
    out: dict[str, dict[str, Any]] = {}
    if "meta" not in seed.column_names:
        return out
    for row in seed.select(["problem_id", "meta"]).to_pylist():
        raw = row["meta"]
        if not raw:
            continue
        try:
            meta = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (ValueError, TypeError):
            continue
        if isinstance(meta, dict) and "ops" in meta and "start" in meta:
            out[row["problem_id"]] = meta
    return out


@dataclass
class AuditResult:
    applicable: bool
    reason: str
    audited: int
    mc: MethodScore
    judge: MethodScore
    consensus: MethodScore
    kept_share: float | None
    oracle_error_kinds: dict[str, int]
    target_met: bool | None
    why_missed: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat_metrics(self) -> dict[str, float]:
        """``audit_<method>_<metric>`` numbers for MLflow and metadata."""
        out: dict[str, float] = {}
        for name in ("mc", "judge", "consensus"):
            s: MethodScore = getattr(self, name)
            for k, v in asdict(s).items():
                if v is not None:
                    out[f"audit_{name}_{k}"] = float(v)
        if self.kept_share is not None:
            out["audit_kept_share"] = float(self.kept_share)
        return out


def audit(
    seed: pa.Table,
    mc: pa.Table,
    judge: pa.Table,
    consensus: pa.Table,
    oracle: Any = None,
    target: float = TARGET_EXACT,
) -> AuditResult:
    """Score every labeller against the oracle on the world rollouts of these tables.

    ``mc`` needs ``rollout_id, problem_id, steps, status, first_error``;
    ``judge`` needs ``rollout_id, status, first_error``; ``consensus`` needs
    ``rollout_id, first_error``. ``oracle`` defaults to
    ``prmforge.world.oracle_first_error``.
    """
    if oracle is None:
        from prmforge.world import oracle_first_error as oracle
    metas = world_meta_by_problem(seed)
    empty = MethodScore(0, None, None, None, None)
    if not metas:
        return AuditResult(False, "not a world dataset: no seed row carries world meta, so there is no oracle",
                           0, empty, empty, empty, None, {}, None, "")
    truth: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for row in mc.select(["rollout_id", "problem_id", "steps"]).to_pylist():
        meta = metas.get(row["problem_id"])
        if meta is None:
            continue
        verdict = oracle(meta, list(row["steps"] or []))
        truth[row["rollout_id"]] = int(verdict.first_error)
        key = verdict.kind or "correct"
        kinds[key] = kinds.get(key, 0) + 1
    mc_pairs = _pairs(mc, truth, need_ok=True)
    judge_pairs = _pairs(judge, truth, need_ok=True)
    cons_pairs = _pairs(consensus, truth, need_ok=False)
    s_mc, s_j, s_c = score(mc_pairs), score(judge_pairs), score(cons_pairs)
    kept_share = (len(cons_pairs) / len(truth)) if truth else None
    met, why = _verdict(s_mc, s_j, s_c, kept_share, target)
    return AuditResult(True, "", len(truth), s_mc, s_j, s_c, kept_share, kinds, met, why)


def _pairs(table: pa.Table, truth: Mapping[str, int], need_ok: bool) -> list[tuple[int, int]]:
    cols = ["rollout_id", "first_error"] + (["status"] if need_ok else [])
    out = []
    for row in table.select(cols).to_pylist():
        if row["rollout_id"] not in truth:
            continue
        if need_ok and row["status"] != "ok":
            continue
        if row["first_error"] is None:
            continue
        out.append((int(row["first_error"]), truth[row["rollout_id"]]))
    return out


def _verdict(mc: MethodScore, judge: MethodScore, cons: MethodScore, kept: float | None,
             target: float) -> tuple[bool | None, str]:
    if cons.exact is None:
        return False, "consensus kept no world rollout, so there is nothing to score"
    reasons = []
    if cons.exact < target:
        reasons.append(f"consensus exact first-error agreement {cons.exact:.3f} < target {target:.2f}")
    for name, other in (("MC-only", mc), ("judge-only", judge)):
        if other.exact is not None and cons.exact < other.exact:
            reasons.append(f"consensus ({cons.exact:.3f}) below {name} ({other.exact:.3f})")
    if not reasons:
        return True, ""
    hints = []
    if cons.n < 30:
        hints.append(f"only {cons.n} kept rollouts: the estimate is noisy")
    if cons.precision is not None and cons.precision < 1.0:
        hints.append("kept rows flag an error in a correct solution: MC estimated 0 for a correct prefix "
                     "(small K, weak policy) where the judge also flagged that step")
    if cons.recall is not None and cons.recall < 1.0:
        hints.append("kept rollouts with a real error that both called clean: a correct final answer reached "
                     "through a wrong step has MC value > 0 everywhere, and the calculator cannot see logic "
                     "errors")
    hints.append("kept rows with an error at the wrong position arise when MC and the judge agree on a later "
                 "slip after a logic error that MC estimated > 0 (a lucky completion) and the judge cannot see")
    return False, "; ".join(reasons + hints)
