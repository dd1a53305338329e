"""The contract of every Parquet dataset prmforge writes, one function per dataset.

Each function takes what the stage was configured to produce (N, K, the
upstream row count) and the distribution guards' thresholds from the stage's
settings, and returns a :class:`~prmforge.contracts.Contract`. The rules:

* schema-level promises the Arrow schema cannot state: ids unique, values in
  their set, probabilities in [0, 1], first-error indices inside the steps;
* conservation against the upstream table: every upstream row is present,
  labelled or counted as failed with a reason;
* distribution guards that catch a silent regression: the share of rows whose
  status is not ok, mean steps per solution, the kept share.
"""

from __future__ import annotations

import math

import pandas as pd
import pyarrow as pa

from prmforge.contracts import Contract, gxe, is_not_in, list_len

SPLITS = ("train", "validation", "test")
FINISH_REASONS = ("stop", "length", "error", "skipped")
MC_STATUSES = ("ok", "error", "empty", "skipped")
JUDGE_STATUSES = ("ok", "unparsed", "abstain", "error", "skipped")


def _list_range(table: pa.Table, column: str) -> dict[str, pd.Series]:
    """Per-row min and max of a float list column (nulls inside skipped; an empty list reads 0.0)."""
    values = [[x for x in (v or []) if x is not None and x == x] for v in table.column(column).to_pylist()]
    return {f"{column}_min": pd.Series([min(v) if v else 0.0 for v in values], dtype="float64"),
            f"{column}_max": pd.Series([max(v) if v else 0.0 for v in values], dtype="float64")}


def _in_unit(column: str) -> list:
    """The derived min and max of ``column`` lie in [0, 1]."""
    e = gxe()
    return [e.ExpectColumnValuesToBeBetween(column=f"{column}_{end}", min_value=0.0, max_value=1.0)
            for end in ("min", "max")]


def _provenance() -> list:
    """Every export row names its labeler, MC labeler, judge and K."""
    e = gxe()
    return [e.ExpectColumnValuesToBeInSet(column="labeler", value_set=["consensus"]),
            *[e.ExpectColumnValuesToNotBeNull(column=c) for c in ("mc_labeler", "judge", "rollout_id")],
            e.ExpectColumnValuesToBeBetween(column="k", min_value=1)]


def _rows(upstream_rows: int | None) -> list:
    """Row count equals the upstream's, when the caller knows it."""
    return [] if upstream_rows is None else [gxe().ExpectTableRowCountToEqual(value=upstream_rows)]


def seed_contract() -> Contract:
    """``seed_problems``: ids unique, problem and answer non-empty, split known."""
    def expectations() -> list:
        e = gxe()
        return [
            e.ExpectColumnValuesToNotBeNull(column="problem_id"),
            e.ExpectColumnValuesToBeUnique(column="problem_id"),
            e.ExpectColumnValueLengthsToBeBetween(column="problem", min_value=1),
            e.ExpectColumnValueLengthsToBeBetween(column="answer", min_value=1),
            e.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        ]

    return Contract("seed_quality", "seed_problems", expectations,
                    describe=("problem_id present and unique", "problem and answer non-empty",
                              f"split in {list(SPLITS)}"))


def quarantine_contract(reasons: list[str]) -> Contract:
    """``seed_problems_quarantine``: every row carries a known reason."""
    def expectations() -> list:
        e = gxe()
        return [e.ExpectColumnValuesToNotBeNull(column="reason"),
                e.ExpectColumnValuesToBeInSet(column="reason", value_set=reasons)]

    return Contract("quarantine_contract", "seed_problems_quarantine", expectations,
                    describe=("every quarantined row has a known reason",))


def dropped_contract() -> Contract:
    """``seed_problems_dropped``: every row says whether it was a duplicate or contaminated, and of what."""
    def expectations() -> list:
        e = gxe()
        return [e.ExpectColumnValuesToBeInSet(column="kind", value_set=["duplicate", "contaminated"]),
                e.ExpectColumnValuesToNotBeNull(column="matched")]

    return Contract("dropped_contract", "seed_problems_dropped", expectations,
                    describe=("kind is duplicate or contaminated", "names what it matched"))


def world_benchmark_contract() -> Contract:
    """``world_benchmark``: ids unique, oracle labels inside the steps, error kinds known."""
    def derive(t: pa.Table) -> dict[str, pd.Series]:
        return {"n_steps": list_len(t, "steps")}

    def expectations() -> list:
        e = gxe()
        return [
            e.ExpectColumnValuesToBeUnique(column="id"),
            e.ExpectColumnValuesToBeBetween(column="label", min_value=-1),
            e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_steps", column_B="label"),
            e.ExpectColumnValuesToBeInSet(column="error_kind", value_set=["arithmetic", "logic", "format"]),
            e.ExpectColumnValueLengthsToBeBetween(column="problem", min_value=1),
        ]

    return Contract("world_benchmark_contract", "world_benchmark", expectations, derive, (
        "id unique", "label in [-1, steps)", "error_kind arithmetic, logic, format or null",
    ))


def rollouts_contract(n: int, upstream_problems: int | None, max_error_share: float,
                      mean_steps: tuple[float, float]) -> Contract:
    """``policy_rollouts``: N samples per problem, engine failures and step counts within bounds."""
    def derive(t: pa.Table) -> dict[str, pd.Series]:
        # skipped prompts (never run: longer than the model's context) have no steps and are counted by the
        # steps_non_empty check; the mean steps per solution is over the solutions that ran
        ran = [r != "skipped" for r in t.column("finish_reason").to_pylist()]
        n_steps = list_len(t, "steps").astype("float64").where(pd.Series(ran, dtype="bool"))
        return {"n_steps": n_steps,
                "engine_failed": is_not_in(t, "finish_reason", {"stop", "length", "skipped"})}

    def expectations() -> list:
        e = gxe()
        lo, hi = mean_steps
        return [
            e.ExpectColumnValuesToNotBeNull(column="rollout_id"),
            e.ExpectColumnValuesToBeUnique(column="rollout_id"),
            e.ExpectColumnValuesToBeBetween(column="sample_index", min_value=0, max_value=n - 1),
            e.ExpectColumnValuesToBeInSet(column="finish_reason", value_set=list(FINISH_REASONS)),
            e.ExpectColumnValuesToBeBetween(column="completion_tokens", min_value=0),
            e.ExpectColumnMeanToBeBetween(column="engine_failed", max_value=max_error_share),
            e.ExpectColumnMeanToBeBetween(column="n_steps", min_value=lo, max_value=hi),
            *_rows(None if upstream_problems is None else upstream_problems * n),
        ]

    return Contract("rollouts_contract", "policy_rollouts", expectations, derive, (
        f"N={n} rollouts per problem, rollout_id unique",
        f"finish_reason in {list(FINISH_REASONS)}",
        f"share of engine errors <= {max_error_share}",
        f"mean steps per solution in [{mean_steps[0]}, {mean_steps[1]}]",
    ))


def mc_contract(k: int, upstream_rollouts: int | None, max_failed_share: float) -> Contract:
    """``mc_step_labels``: every rollout labelled or failed with a status, K as configured, values in range."""
    def derive(t: pa.Table) -> dict[str, pd.Series]:
        soft = [v or [] for v in t.column("probe_soft").to_pylist()]
        return {"n_steps": list_len(t, "steps"), "n_values": list_len(t, "step_values"),
                "probe_soft_min": pd.Series([min(v) if v else 0.0 for v in soft], dtype="float64"),
                "probe_soft_max": pd.Series([max(v) if v else 0.0 for v in soft], dtype="float64"),
                **_list_range(t, "step_values"),
                "failed": is_not_in(t, "status", {"ok", "skipped"})}

    def expectations() -> list:
        e = gxe()
        return [
            e.ExpectColumnValuesToBeUnique(column="rollout_id"),
            e.ExpectColumnValuesToBeInSet(column="status", value_set=list(MC_STATUSES)),
            e.ExpectColumnValuesToBeInSet(column="k", value_set=[k]),
            e.ExpectColumnValuesToBeBetween(column="first_error", min_value=-1),
            e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_steps", column_B="first_error"),
            e.ExpectColumnValuesToBeBetween(column="probe_soft_min", min_value=0.0, max_value=1.0),
            e.ExpectColumnValuesToBeBetween(column="probe_soft_max", min_value=0.0, max_value=1.0),
            *_in_unit("step_values"),
            e.ExpectColumnPairValuesToBeEqual(column_A="n_steps", column_B="n_values"),
            e.ExpectColumnValuesToBeBetween(column="prefix_value", min_value=0.0, max_value=1.0),
            *[e.ExpectColumnValuesToNotBeNull(column=c) for c in ("labeler", "engine", "model")],
            e.ExpectColumnMeanToBeBetween(column="failed", max_value=max_failed_share),
            *_rows(upstream_rollouts),
        ]

    return Contract("mc_contract", "mc_step_labels", expectations, derive, (
        "one row per rollout (labelled, or failed with its status)", f"K={k}",
        "first_error in [-1, steps)", "MC values in [0, 1]", "one step value per step, values and prefix "
        "value in [0, 1]", "labeler, engine and model named", f"share not ok <= {max_failed_share}",
    ))


def judge_contract(upstream_rollouts: int | None, max_unusable_share: float) -> Contract:
    """``judge_step_labels``: one verdict per rollout; unusable verdicts (unparsed, error) within bounds."""
    def derive(t: pa.Table) -> dict[str, pd.Series]:
        return {"unusable": is_not_in(t, "status", {"ok", "skipped"})}

    def expectations() -> list:
        e = gxe()
        return [
            e.ExpectColumnValuesToBeUnique(column="rollout_id"),
            e.ExpectColumnValuesToBeInSet(column="status", value_set=list(JUDGE_STATUSES)),
            e.ExpectColumnValuesToBeBetween(column="first_error", min_value=-1),
            e.ExpectColumnMeanToBeBetween(column="unusable", max_value=max_unusable_share),
            *_rows(upstream_rollouts),
        ]

    return Contract("judge_contract", "judge_step_labels", expectations, derive, (
        "one verdict per rollout", f"status in {list(JUDGE_STATUSES)}",
        f"share unparsed/abstain/error <= {max_unusable_share}",
    ))


def consensus_contract(ks: list[int], upstream_rollouts: int | None, min_kept_share: float) -> Contract:
    """``consensus_labels``: labels consistent with the steps and first error; kept share above the floor."""
    def derive(t: pa.Table) -> dict[str, pd.Series]:
        return {"n_steps": list_len(t, "steps"), "n_labels": list_len(t, "labels"),
                "n_soft": list_len(t, "soft_labels"), **_list_range(t, "soft_labels")}

    def expectations() -> list:
        e = gxe()
        out = [
            e.ExpectColumnValuesToBeUnique(column="rollout_id"),
            e.ExpectColumnPairValuesToBeEqual(column_A="n_labels", column_B="n_soft"),
            *_in_unit("soft_labels"),
            *_provenance(),
            e.ExpectColumnValuesToBeInSet(column="k", value_set=list(ks)),
            e.ExpectColumnValuesToBeBetween(column="first_error", min_value=-1),
            e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_steps", column_B="first_error"),
            e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_steps", column_B="n_labels", or_equal=True),
            e.ExpectColumnValuesToBeBetween(column="n_labels", min_value=1),
        ]
        if upstream_rollouts is not None:
            out.append(e.ExpectTableRowCountToBeBetween(
                min_value=math.ceil(min_kept_share * upstream_rollouts), max_value=upstream_rollouts))
        return out

    return Contract("consensus_contract", "consensus_labels", expectations, derive, (
        "rollout_id unique", f"K in {list(ks)} (the MC labels')", "first_error in [-1, steps)",
        "1 <= labels <= steps", "one soft label in [0, 1] per label", "provenance: labeler, MC labeler, judge, K",
        f"kept share >= {min_kept_share}",
    ))


def trl_contract(upstream_rows: int | None) -> Contract:
    """The TRL stepwise export: one row per kept rollout, one label per completion step."""
    def derive(t: pa.Table) -> dict[str, pd.Series]:
        return {"n_completions": list_len(t, "completions"), "n_labels": list_len(t, "labels")}

    def expectations() -> list:
        e = gxe()
        return [
            e.ExpectColumnValuesToNotBeNull(column="prompt"),
            e.ExpectColumnPairValuesToBeEqual(column_A="n_completions", column_B="n_labels"),
            e.ExpectColumnValuesToBeBetween(column="n_completions", min_value=1),
            *_provenance(),
            *_rows(upstream_rows),
        ]

    return Contract("trl_contract", "consensus_labels_trl", expectations, derive, (
        "one row per kept rollout", "as many labels as completions", "prompt present", "provenance present",
    ))


def trl_soft_contract(upstream_rows: int | None) -> Contract:
    """The soft TRL export: one row per kept rollout, one label in [0, 1] and one advantage per completion."""
    def derive(t: pa.Table) -> dict[str, pd.Series]:
        return {"n_completions": list_len(t, "completions"), "n_labels": list_len(t, "labels"),
                "n_advantages": list_len(t, "advantages"), **_list_range(t, "labels"),
                **_list_range(t, "advantages")}

    def expectations() -> list:
        e = gxe()
        return [
            e.ExpectColumnValuesToNotBeNull(column="prompt"),
            e.ExpectColumnPairValuesToBeEqual(column_A="n_completions", column_B="n_labels"),
            e.ExpectColumnPairValuesToBeEqual(column_A="n_completions", column_B="n_advantages"),
            e.ExpectColumnValuesToBeBetween(column="n_completions", min_value=1),
            *_in_unit("labels"),
            *[e.ExpectColumnValuesToBeBetween(column=f"advantages_{end}", min_value=-1.0, max_value=1.0)
              for end in ("min", "max")],
            *_provenance(),
            *_rows(upstream_rows),
        ]

    return Contract("trl_soft_contract", "consensus_labels_trl_soft", expectations, derive, (
        "one row per kept rollout", "one soft label in [0, 1] and one advantage in [-1, 1] per completion",
        "prompt present", "provenance present",
    ))


def openrlhf_contract(upstream_rows: int | None, placeholder: str = "ки") -> Contract:
    """The OpenRLHF export: one +/- label and one value in [0, 1] per placeholder in the input."""
    def derive(t: pa.Table) -> dict[str, pd.Series]:
        labels = t.column("label").to_pylist()
        return {"n_placeholders": pd.Series([(v or "").count(placeholder) for v in t.column("input").to_pylist()],
                                            dtype="int64"),
                "n_labels": list_len(t, "label"), "n_values": list_len(t, "value"),
                "bad_label": pd.Series([float(any(x not in ("+", "-") for x in (v or []))) for v in labels],
                                       dtype="float64"),
                **_list_range(t, "value")}

    def expectations() -> list:
        e = gxe()
        return [
            e.ExpectColumnPairValuesToBeEqual(column_A="n_placeholders", column_B="n_labels"),
            e.ExpectColumnPairValuesToBeEqual(column_A="n_labels", column_B="n_values"),
            e.ExpectColumnValuesToBeBetween(column="n_labels", min_value=1),
            e.ExpectColumnValuesToBeInSet(column="bad_label", value_set=[0.0]),
            *_in_unit("value"),
            *_provenance(),
            *_rows(upstream_rows),
        ]

    return Contract("openrlhf_contract", "consensus_labels_openrlhf", expectations, derive, (
        f"one label and one value per {placeholder!r} placeholder", "labels are '+' or '-'", "values in [0, 1]",
        "provenance present",
    ))


def step_scores_contract(max_unscored_share: float, samples_per_subset: dict[str, int] | None = None) -> Contract:
    """``prm_step_scores``: probabilities in [0, 1]; unscored steps under the limit; benchmark sizes as scored.

    One row per (sample, step) with ``subset``, ``id``, ``split``, ``step`` and
    ``score`` (null when the step did not fit the PRM's context).
    """
    def derive(t: pa.Table) -> dict[str, pd.Series]:
        keys = [f"{s}/{i}" for s, i in zip(t.column("subset").to_pylist(), t.column("id").to_pylist(), strict=True)]
        return {"unscored": pd.Series([1.0 if s is None or s != s else 0.0 for s in t.column("score").to_pylist()],
                                      dtype="float64"),
                "sample": pd.Series(keys, dtype="object")}

    def expectations() -> list:
        e = gxe()
        out = [
            e.ExpectColumnValuesToNotBeNull(column="id"),
            e.ExpectColumnValuesToBeInSet(column="split", value_set=["calibration", "test"]),
            e.ExpectColumnValuesToBeBetween(column="step", min_value=0),
            e.ExpectColumnValuesToBeBetween(column="score", min_value=0.0, max_value=1.0),
            e.ExpectColumnMeanToBeBetween(column="unscored", max_value=max_unscored_share),
        ]
        if samples_per_subset:
            total = sum(samples_per_subset.values())
            out += [e.ExpectColumnDistinctValuesToEqualSet(column="subset", value_set=sorted(samples_per_subset)),
                    e.ExpectColumnUniqueValueCountToBeBetween(column="sample", min_value=total, max_value=total)]
        return out

    return Contract("step_scores_contract", "prm_step_scores", expectations, derive, (
        "scores in [0, 1]", f"unscored share <= {max_unscored_share}",
        f"samples per subset as scored: {samples_per_subset or 'any'}",
    ))
