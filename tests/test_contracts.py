"""Every dataset's GX contract passes good tables and names what is wrong in bad ones."""

from __future__ import annotations

import pyarrow as pa
import pytest

from prmforge.contracts import validate
from prmforge.contracts.datasets import (
    consensus_contract,
    judge_contract,
    mc_contract,
    rollouts_contract,
    seed_contract,
    step_scores_contract,
    trl_contract,
)


def rollouts(n_problems: int = 3, n: int = 2, **change) -> pa.Table:
    rows = []
    for p in range(n_problems):
        for i in range(n):
            rows.append({"rollout_id": f"p{p}-{i}", "problem_id": f"p{p}", "sample_index": i,
                         "steps": ["a", "b", "c"], "finish_reason": "stop", "completion_tokens": 12})
    for key, values in change.items():
        for row, v in zip(rows, values, strict=False):
            row[key] = v
    return pa.Table.from_pylist(rows)


def failed(result) -> set[str]:
    return {f"{f['expectation']}:{f['column'] or ''}" for f in result.failures}


def test_rollouts_contract_passes_good_and_names_each_broken_promise() -> None:
    good = validate(rollouts_contract(2, 3, 0.1, (1, 10)), rollouts())
    assert good.passed and good.rows == 6 and not good.failures

    bad = rollouts(finish_reason=["error", "error", "bogus"], sample_index=[0, 0, 5],
                   rollout_id=["x", "x"], steps=[[], [], []])
    result = validate(rollouts_contract(2, 4, 0.1, (1, 10)), bad)
    assert not result.passed
    assert failed(result) == {
        "expect_column_values_to_be_unique:rollout_id",
        "expect_column_values_to_be_between:sample_index",
        "expect_column_values_to_be_in_set:finish_reason",
        "expect_column_mean_to_be_between:engine_failed",
        "expect_table_row_count_to_equal:",
    }
    bogus = next(f for f in result.failures if f["column"] == "finish_reason")
    assert bogus["sample_unexpected"] == ["bogus"] and bogus["unexpected_count"] == 1
    assert "finish_reason" in result.summary()


def test_rollouts_contract_leaves_skipped_prompts_to_the_steps_check() -> None:
    """Prompts longer than the context are skipped, not engine errors, and do not drag the mean steps down."""
    table = rollouts(finish_reason=["skipped"] * 4, steps=[[], [], [], []])
    assert validate(rollouts_contract(2, 3, 0.0, (2, 10)), table).passed


def mc_rows(**change) -> pa.Table:
    rows = [{"rollout_id": f"r{i}", "status": "ok", "k": 4, "first_error": -1 if i % 2 else 1,
             "steps": ["a", "b", "c"], "probe_soft": [1.0, 0.25], "labels": [True, False],
             "step_values": [1.0, 0.25, None], "prefix_value": 0.5, "labeler": "mc_binary", "engine": "hf",
             "model": "m"} for i in range(4)]
    for key, values in change.items():
        for row, v in zip(rows, values, strict=False):
            row[key] = v
    return pa.Table.from_pylist(rows)


def test_mc_contract_checks_k_ranges_conservation_and_failed_share() -> None:
    assert validate(mc_contract(4, 4, 0.25), mc_rows()).passed
    bad = mc_rows(k=[8], first_error=[3], probe_soft=[[0.5, 1.5]], status=["error", "error"])
    result = validate(mc_contract(4, 5, 0.25), bad)
    assert failed(result) == {
        "expect_column_values_to_be_in_set:k",
        "expect_column_pair_values_a_to_be_greater_than_b:",
        "expect_column_values_to_be_between:probe_soft_max",
        "expect_column_mean_to_be_between:failed",
        "expect_table_row_count_to_equal:",
    }


def test_judge_contract_bounds_unusable_verdicts() -> None:
    table = pa.Table.from_pylist([{"rollout_id": f"r{i}", "status": s, "first_error": fe}
                                  for i, (s, fe) in enumerate([("ok", 1), ("ok", -1), ("unparsed", None),
                                                               ("error", None)])])
    assert validate(judge_contract(4, 0.5), table).passed
    result = validate(judge_contract(4, 0.25), table)
    assert failed(result) == {"expect_column_mean_to_be_between:unusable"}


def test_consensus_and_trl_contracts() -> None:
    prov = {"labeler": "consensus", "mc_labeler": "mc_binary", "judge": "calculator"}
    kept = pa.Table.from_pylist([{"rollout_id": "a", "k": 4, "first_error": 1, "steps": ["x", "y"],
                                  "labels": [True, False], "soft_labels": [0.5, 0.0], **prov},
                                 {"rollout_id": "b", "k": 4, "first_error": -1, "steps": ["x"], "labels": [True],
                                  "soft_labels": [1.0], **prov}])
    assert validate(consensus_contract([4], 4, 0.5), kept).passed
    result = validate(consensus_contract([4], 10, 0.5), kept)
    assert failed(result) == {"expect_table_row_count_to_be_between:"}
    broken = pa.Table.from_pylist([{"rollout_id": "a", "k": 4, "first_error": 2, "steps": ["x", "y"],
                                    "labels": [True, True, False], "soft_labels": [1.0, 1.0, 0.0], **prov}])
    assert failed(validate(consensus_contract([4], None, 0.0), broken)) == {
        "expect_column_pair_values_a_to_be_greater_than_b:"}

    trl = pa.Table.from_pylist([{"prompt": "p", "completions": ["a", "b"], "labels": [True, False], "k": 4, **prov,
                                 "rollout_id": "a"}])
    assert validate(trl_contract(1), trl).passed
    bad = pa.Table.from_pylist([{"prompt": None, "completions": ["a", "b"], "labels": [True], "k": 4, **prov,
                                 "rollout_id": "a"}])
    assert failed(validate(trl_contract(1), bad)) == {"expect_column_values_to_not_be_null:prompt",
                                                      "expect_column_pair_values_to_be_equal:"}


def test_step_scores_contract_bounds_unscored_share_and_sizes() -> None:
    scores = pa.Table.from_pylist([{"subset": "gsm8k", "id": "1", "split": "test", "step": i, "score": s}
                                   for i, s in enumerate([0.9, 0.1, None, 0.5])])
    assert validate(step_scores_contract(0.3, {"gsm8k": 1}), scores).passed
    result = validate(step_scores_contract(0.01, {"gsm8k": 2, "math": 1}), scores)
    assert failed(result) == {"expect_column_mean_to_be_between:unscored",
                              "expect_column_distinct_values_to_equal_set:subset",
                              "expect_column_unique_value_count_to_be_between:sample"}


def test_seed_contract_on_real_gsm8k(shared_data) -> None:
    from prmforge.ingest.core import ingest_dataset
    from prmforge.registry import DatasetSpec

    spec = DatasetSpec(key="gsm8k-real", source=str(shared_data / "gsm8k" / "test.jsonl"), adapter="gsm8k",
                       split="test")
    result = ingest_dataset(spec)
    assert result.accepted.num_rows > 1000
    assert validate(seed_contract(), result.accepted).passed
    broken = result.accepted.set_column(result.accepted.schema.get_field_index("split"), "split",
                                        pa.array(["holdout"] * result.accepted.num_rows))
    bad = validate(seed_contract(), broken)
    assert not bad.passed and bad.failures[0]["sample_unexpected"][0] == "holdout"


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_guards_are_inclusive_at_their_threshold(share: float) -> None:
    table = rollouts(n_problems=1, n=2, finish_reason=["error", "stop"] if share == 0.0 else ["error", "error"])
    assert validate(rollouts_contract(2, 1, 0.5 if share == 0.0 else 1.0, (0, 10)), table).passed
