"""Consensus filtering, its validation rules, and the TRL export loading with `datasets`."""
# (soft labels, provenance and the other exports: tests/test_soft_labels.py)

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prmforge.labeling.consensus import (
    JUDGE_SAYS_NO_ERROR,
    JUDGE_UNPARSED,
    MC_EARLIER,
    MC_FAILED,
    MC_LATER,
    MC_SAYS_NO_ERROR,
    MISSING,
    build_consensus,
    validate_consensus,
)
from prmforge.labeling.exports import to_trl


def _mc(rows: list[tuple[str, int, str, int]]) -> pa.Table:
    """(rollout_id, n_steps, status, first_error)"""
    return pa.Table.from_pylist([
        {"rollout_id": rid, "problem_id": f"p-{rid}", "dataset": "world", "prompt": f"Problem {rid}\n",
         "steps": [f"{rid} step {j}" for j in range(n)], "status": st, "first_error": fe,
         "mc_mode": "binary_search", "k": 8}
        for rid, n, st, fe in rows
    ])


def _judge(rows: list[tuple[str, str, int | None]]) -> pa.Table:
    return pa.Table.from_pylist([{"rollout_id": rid, "status": st, "first_error": fe} for rid, st, fe in rows],
                                schema=pa.schema([("rollout_id", pa.string()), ("status", pa.string()),
                                                  ("first_error", pa.int64())]))


def test_keeps_agreements_and_breaks_down_disagreements() -> None:
    mc = _mc([("a", 3, "ok", -1), ("b", 4, "ok", 2), ("c", 4, "ok", 1), ("d", 4, "ok", 3),
              ("e", 3, "ok", -1), ("f", 3, "ok", 0), ("g", 3, "ok", 1), ("h", 3, "error", -1), ("i", 2, "ok", 0)])
    judge = _judge([("a", "ok", -1), ("b", "ok", 2), ("c", "ok", 2), ("d", "ok", 1), ("e", "ok", 0),
                    ("f", "ok", -1), ("g", "unparsed", None), ("h", "ok", -1), ("x", "ok", -1)])
    res = build_consensus(mc, judge, "calculator")
    rows = {r["rollout_id"]: r for r in res.table.to_pylist()}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["labels"] == [True, True, True] and len(rows["a"]["steps"]) == 3
    assert rows["b"]["labels"] == [True, True, False] and rows["b"]["steps"] == ["b step 0", "b step 1", "b step 2"]
    assert rows["b"]["judge"] == "calculator" and rows["b"]["mc_mode"] == "binary_search" and rows["b"]["k"] == 8
    assert res.breakdown[MC_EARLIER] == 1 and res.breakdown[MC_LATER] == 1
    assert res.breakdown[MC_SAYS_NO_ERROR] == 1 and res.breakdown[JUDGE_SAYS_NO_ERROR] == 1
    assert res.breakdown[JUDGE_UNPARSED] == 1 and res.breakdown[MC_FAILED] == 1
    assert res.breakdown[MISSING] == 2  # "i" has no judge verdict, "x" no MC verdict
    assert res.total == 10 and res.kept == 2 and res.kept_share == pytest.approx(0.2)
    assert sum(res.breakdown.values()) + res.kept == res.total
    assert validate_consensus(res.table, mc.column("rollout_id").to_pylist()).ok


def test_duplicate_rollouts_are_refused() -> None:
    mc = _mc([("a", 2, "ok", -1), ("a", 2, "ok", -1)])
    with pytest.raises(ValueError, match="duplicate"):
        build_consensus(mc, _judge([("a", "ok", -1)]), "calculator")


def test_validation_reports_each_broken_rule() -> None:
    good = build_consensus(_mc([("a", 3, "ok", 1), ("b", 2, "ok", -1)]),
                           _judge([("a", "ok", 1), ("b", "ok", -1)]), "calculator").table
    assert validate_consensus(good, ["a", "b"]).ok
    bad = pa.Table.from_pylist([
        {"rollout_id": "a", "steps": ["x", "y"], "labels": [False]},
        {"rollout_id": "b", "steps": ["x", "y", "z"], "labels": [True, False, True]},
        {"rollout_id": "b", "steps": ["x"], "labels": [True]},
        {"rollout_id": "q", "steps": ["x"], "labels": [True]},
    ])
    v = validate_consensus(bad, ["a", "b", "b"])
    assert not v.ok
    assert v.labels_match_steps == ["a"]
    assert v.label_after_negative == ["b"]
    assert v.duplicate_ids == ["b"]
    assert v.untraceable == ["b", "b", "q"]  # b appears twice among the rollouts, q never


def test_trl_export_loads_with_datasets(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    res = build_consensus(_mc([("a", 3, "ok", 1), ("b", 2, "ok", -1)]),
                          _judge([("a", "ok", 1), ("b", "ok", -1)]), "calculator")
    trl = to_trl(res.table)
    assert trl.column_names[:3] == ["prompt", "completions", "labels"]  # TRL's columns, then provenance
    assert {"labeler", "mc_labeler", "k", "judge", "model", "model_hash", "seed"} <= set(trl.column_names)
    path = tmp_path / "trl" / "data.parquet"
    path.parent.mkdir()
    pq.write_table(trl, path)
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 2
    rows = {r["prompt"]: r for r in ds}
    assert rows["Problem a\n"]["completions"] == ["a step 0", "a step 1"]
    assert rows["Problem a\n"]["labels"] == [True, False]
    assert rows["Problem b\n"]["labels"] == [True, True]
    assert ds.features["labels"].feature.dtype == "bool"


def test_audit_scores_methods_against_the_oracle_and_explains_a_miss() -> None:
    from prmforge.labeling.audit import audit, score
    from prmforge.world import generate_problems, meta_json

    s = score([(-1, -1), (1, 1), (0, 2), (-1, 1), (2, -1)])
    assert (s.n, s.exact) == (5, 0.4)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3)

    p = generate_problems(1, seed=5)[0]
    seed = pa.Table.from_pylist([{"problem_id": p.problem_id, "meta": meta_json(p)}])
    bad = list(p.steps)
    bad[0] = bad[0].replace("=", "= 1 +")  # "a op b = 1 + c": an arithmetic error at step 0
    mc = pa.Table.from_pylist([
        {"rollout_id": "good", "problem_id": p.problem_id, "steps": p.steps, "status": "ok", "first_error": -1},
        {"rollout_id": "bad", "problem_id": p.problem_id, "steps": bad, "status": "ok", "first_error": -1},
    ])
    judge = _judge([("good", "ok", -1), ("bad", "ok", -1)])
    cons = pa.Table.from_pylist([{"rollout_id": "good", "first_error": -1}, {"rollout_id": "bad", "first_error": -1}])
    rep = audit(seed, mc, judge, cons)
    assert rep.applicable and rep.audited == 2 and rep.oracle_error_kinds["correct"] == 1
    assert rep.consensus.exact == 0.5 and rep.kept_share == 1.0
    assert rep.target_met is False and "< target" in rep.why_missed and "only 2 kept" in rep.why_missed
    assert rep.flat_metrics()["audit_consensus_exact"] == 0.5

    other = audit(pa.Table.from_pylist([{"problem_id": "x", "meta": "{}"}]), mc, judge, cons)
    assert not other.applicable and "not a world dataset" in other.reason
