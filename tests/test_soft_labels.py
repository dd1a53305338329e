"""Soft labels, PAV-style advantages, provenance, and the TRL (hard, soft) and OpenRLHF exports."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from prmforge.contracts import validate
from prmforge.contracts.datasets import (
    consensus_contract,
    mc_contract,
    openrlhf_contract,
    trl_contract,
    trl_soft_contract,
)
from prmforge.labeling.consensus import build_consensus
from prmforge.labeling.exports import PLACEHOLDER, to_openrlhf, to_trl, to_trl_soft
from prmforge.labeling.soft import (
    advantages,
    mc_labeler,
    model_content_hash,
    problem_values,
    soft_labels,
    step_values,
    with_mc_soft_columns,
)
from prmforge.labeling.stages import MC_SCHEMA, MC_SHARD_SCHEMA


def failed(result) -> set[str]:
    return {f"{f['expectation']}:{f['column'] or ''}" for f in result.failures}


def test_step_values_conventions() -> None:
    # binary search on a wrong 4-step rollout: probed 1 (0.5 of 8) and 2 (0 of 8); the last is free (0.0)
    vals, ks = step_values(4, [1, 2], [0.5, 0.0], [8, 8], 8, final_correct=False, final_known=True)
    assert vals == [None, 0.5, 0.0, 0.0] and ks == [0, 8, 8, 0]
    # a correct rollout costs no probe: only the free last value; a truncated one has none
    assert step_values(3, [], [], [], 8, True, True) == ([None, None, 1.0], [0, 0, 0])
    assert step_values(3, [], [], [], 8, True, False) == ([None, None, None], [0, 0, 0])
    # an adaptive probe records the completions it drew; without probe_k every probe used K
    assert step_values(2, [0], [1.0], [2], 8, True, True)[1] == [2, 0]
    assert step_values(2, [0], [1.0], None, 8, True, True)[1] == [8, 0]
    # progress: value minus the previous prefix's (the empty prefix's before step 0); unknown stays unknown
    assert advantages([None, 0.5, 0.0, 0.0], 0.75) == [None, None, -0.5, 0.0]
    assert advantages([0.5, 1.0], 0.25) == [0.25, 0.5]
    assert advantages([0.5], None) == [None]
    # soft training target: the value where measured, else the hard label
    assert soft_labels([True, True, False], [None, 0.5, 0.0]) == [1.0, 0.5, 0.0]
    assert mc_labeler("binary_search") == "mc_binary" and mc_labeler("per_step") == "mc_per_step"
    assert mc_labeler("binary_search+reuse") == "mc_binary+reuse"
    pv = problem_values([{"problem_id": "p", "correct": True}, {"problem_id": "p", "correct": False},
                         {"problem_id": "p", "correct": False, "skip_reason": "too long"},
                         {"problem_id": "q", "correct": False, "skip_reason": "too long"}])
    assert pv == {"p": (0.5, 2), "q": (None, 0)}


def test_model_content_hash_follows_the_weights(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights-1")
    first = model_content_hash(str(folder))
    assert first is not None and first.startswith("sha256:") and model_content_hash(f"file://{folder}") == first
    (folder / "model.safetensors").write_bytes(b"weights-2!")
    assert model_content_hash(str(folder)) != first
    assert model_content_hash("Qwen/Qwen2.5-Math-7B") is None and model_content_hash(str(tmp_path / "no")) is None


def _mc_shard_rows() -> list[dict]:
    base = {"dataset": "d", "prompt": "Problem\n", "gold_answer": "7", "mc_mode": "binary_search", "k": 4,
            "status": "ok", "completions": 0, "generated_tokens": 0, "prompt_tokens": 0, "rounds": 0, "free_positive": 0, "shared_probes": 0,
            "detail": None}
    return [
        {**base, "rollout_id": "a", "problem_id": "p", "steps": ["s0", "s1", "s2"], "final_correct": False,
         "first_error": 1, "labels": [True, False], "probe_steps": [1, 0], "probe_soft": [0.0, 0.75],
         "probe_hard": [False, True], "probe_k": [4, 4]},
        {**base, "rollout_id": "b", "problem_id": "p", "steps": ["t0", "t1"], "final_correct": True,
         "first_error": -1, "labels": [True, True], "probe_steps": [], "probe_soft": [], "probe_hard": [],
         "probe_k": []},
    ]


def _mc_table() -> pa.Table:
    shard = pa.Table.from_pylist(_mc_shard_rows(), schema=MC_SHARD_SCHEMA)
    rollouts = [{"rollout_id": "a", "problem_id": "p", "correct": False},
                {"rollout_id": "b", "problem_id": "p", "correct": True}]
    prov = {"seed": 3, "engine": "hf", "model": "models/policy/x", "model_hash": "sha256:ab"}
    return with_mc_soft_columns(shard, rollouts, prov, MC_SCHEMA)


def _judge() -> pa.Table:
    return pa.Table.from_pylist([
        {"rollout_id": rid, "problem_id": "p", "dataset": "d", "judge": "calculator", "status": "ok",
         "first_error": fe, "judge_identity": json.dumps({"judge": "calculator"})} for rid, fe in (("a", 1), ("b", -1))])


def test_mc_table_carries_values_advantages_and_provenance() -> None:
    rows = {r["rollout_id"]: r for r in _mc_table().to_pylist()}
    a, b = rows["a"], rows["b"]
    assert a["step_values"] == [0.75, 0.0, 0.0] and a["step_k"] == [4, 4, 0]
    assert a["prefix_value"] == 0.5 and a["prefix_n"] == 2  # one of the problem's two rollouts is right
    assert a["step_advantages"] == [0.25, -0.75, 0.0]
    assert b["step_values"] == [None, 1.0] and b["step_advantages"] == [None, None]
    assert {(r["labeler"], r["seed"], r["engine"], r["model"], r["model_hash"]) for r in rows.values()} == {
        ("mc_binary", 3, "hf", "models/policy/x", "sha256:ab")}
    assert validate(mc_contract(4, 2, 0.0), _mc_table()).passed


def test_mc_contract_rejects_values_out_of_range_and_misaligned() -> None:
    rows = _mc_table().to_pylist()
    rows[0]["step_values"] = [1.5, 0.0, 0.0]
    rows[1]["step_values"] = [1.0]
    result = validate(mc_contract(4, 2, 0.0), pa.Table.from_pylist(rows, schema=MC_SCHEMA))
    assert failed(result) == {"expect_column_values_to_be_between:step_values_max",
                              "expect_column_pair_values_to_be_equal:"}


def test_consensus_rows_and_exports() -> None:
    res = build_consensus(_mc_table(), _judge(), "calculator")
    rows = {r["rollout_id"]: r for r in res.table.to_pylist()}
    a = rows["a"]
    assert a["labels"] == [True, False] and a["soft_labels"] == [0.75, 0.0] and a["step_k"] == [4, 4]
    assert a["step_advantages"] == [0.25, -0.75] and rows["b"]["soft_labels"] == [1.0, 1.0]
    assert (a["labeler"], a["mc_labeler"], a["judge_status"], a["judge_verdict"]) == ("consensus", "mc_binary", "ok", 1)
    assert json.loads(a["judge_identity"]) == {"judge": "calculator"} and a["model_hash"] == "sha256:ab"
    assert validate(consensus_contract([4], 2, 0.5), res.table).passed

    trl, soft, orl = to_trl(res.table), to_trl_soft(res.table), to_openrlhf(res.table)
    assert trl.column_names[:3] == ["prompt", "completions", "labels"] and "model_hash" in trl.column_names
    assert trl.column("labels").to_pylist()[0] == [True, False]
    assert soft.column("labels").to_pylist()[0] == [0.75, 0.0]
    assert soft.column("advantages").to_pylist()[0] == [0.25, -0.75]
    first = orl.to_pylist()[0]
    assert first["input"] == f"Problem\ns0 {PLACEHOLDER}\ns1 {PLACEHOLDER}\n"
    assert first["label"] == ["+", "-"] and first["value"] == [0.75, 0.0] and first["k"] == 4
    assert validate(trl_contract(2), trl).passed and validate(trl_soft_contract(2), soft).passed
    assert validate(openrlhf_contract(2), orl).passed


def test_export_contracts_reject_bad_tables() -> None:
    res = build_consensus(_mc_table(), _judge(), "calculator")
    soft = to_trl_soft(res.table).to_pylist()
    soft[0]["labels"] = [1.2]  # out of range and one short
    soft[1]["labeler"] = "mc_binary"
    result = validate(trl_soft_contract(2), pa.Table.from_pylist(soft))
    assert failed(result) == {"expect_column_pair_values_to_be_equal:", "expect_column_values_to_be_in_set:labeler",
                              "expect_column_values_to_be_between:labels_min",
                              "expect_column_values_to_be_between:labels_max"}
    orl = to_openrlhf(res.table).to_pylist()
    orl[0]["input"] = orl[0]["input"].replace(PLACEHOLDER, "", 1)  # a step lost its tag
    orl[1]["label"] = ["+", "?"]
    result = validate(openrlhf_contract(3), pa.Table.from_pylist(orl))
    assert failed(result) == {"expect_column_pair_values_to_be_equal:", "expect_column_values_to_be_in_set:bad_label",
                              "expect_table_row_count_to_equal:"}
    trl = to_trl(res.table).to_pylist()
    trl[0]["mc_labeler"] = None
    assert failed(validate(trl_contract(2), pa.Table.from_pylist(trl))) == {
        "expect_column_values_to_not_be_null:mc_labeler"}


def test_exports_on_real_processbench_steps(shared_data: Path, tmp_path: Path) -> None:
    """Real ProcessBench solutions (multi-line, LaTeX, long) through consensus and every export format.

    The expert label stands in for both MC and the judge; each export must keep one label (and one
    OpenRLHF placeholder) per kept step, load with ``datasets``, and pass its contract.
    """
    datasets = pytest.importorskip("datasets")
    samples = []
    for name in ("gsm8k", "math"):
        samples += json.loads((shared_data / "processbench" / f"{name}.json").read_text())[:40]
    mc_rows, judge_rows = [], []
    for x in samples:
        steps, fe = list(x["steps"]), int(x["label"])
        n = len(steps) if fe < 0 else fe + 1
        mc_rows.append({"rollout_id": x["id"], "problem_id": x["id"], "dataset": "processbench",
                        "prompt": x["problem"] + "\n", "steps": steps, "status": "ok", "first_error": fe,
                        "mc_mode": "per_step", "k": 8, "step_values": [0.5] * (n - 1) + [0.0 if fe >= 0 else 1.0]
                        + [None] * (len(steps) - n), "step_k": [8] * len(steps), "prefix_value": 0.5,
                        "labeler": "mc_per_step", "seed": 0, "engine": "hf", "model": "m", "model_hash": None})
        judge_rows.append({"rollout_id": x["id"], "status": "ok", "first_error": fe, "judge_identity": "{}"})
    res = build_consensus(pa.Table.from_pylist(mc_rows), pa.Table.from_pylist(judge_rows), "expert")
    assert res.kept == len(samples)
    for build, contract, name in ((to_trl, trl_contract, "trl"), (to_trl_soft, trl_soft_contract, "soft"),
                                  (to_openrlhf, openrlhf_contract, "openrlhf")):
        table = build(res.table)
        result = validate(contract(len(samples)), table)
        assert result.passed, (name, result.summary())
        path = tmp_path / name / "data.parquet"
        path.parent.mkdir()
        import pyarrow.parquet as pq

        pq.write_table(table, path)
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
        assert ds.num_rows == len(samples)
    orl = to_openrlhf(res.table).to_pylist()
    assert all(r["input"].count(PLACEHOLDER) == len(r["label"]) == len(r["value"]) for r in orl)
    assert any("\n" in s for x in samples for s in x["steps"])  # real steps span lines: the tags still count
