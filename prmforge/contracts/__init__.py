"""Data contracts: one Great Expectations 1.x suite per dataset, declared next to its schema.

A :class:`Contract` is the suite of one dataset: plain GX expectations over a
pandas frame of the table plus a few derived columns (list lengths, "status is
not ok" flags), so list columns and distribution guards are checked with the
stock expectations instead of custom ones. :func:`validate` runs it on an
ephemeral GX context and returns a :class:`ContractResult` that says, per
failed expectation, what it checked and sample offending values. The Dagster
side (``resources/quality.py``) only turns that result into an asset check.

Where to read a stage's contract: ``prmforge/contracts/<stage>.py``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from prmforge.env import disable_gx_analytics

_LOCK = threading.Lock()
_CONTEXT: Any = None


def gx_module() -> Any:
    """Great Expectations with analytics off (no network); imported on first use (~3 s)."""
    disable_gx_analytics()
    import great_expectations as gx

    return gx


def gxe() -> Any:
    """``great_expectations.expectations``, for building suites."""
    return gx_module().expectations


def _context() -> Any:
    """One ephemeral GX context per process (building one costs ~0.5 s)."""
    global _CONTEXT
    with _LOCK:
        if _CONTEXT is None:
            gx = gx_module()
            from great_expectations.data_context.types.base import ProgressBarsConfig

            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            _CONTEXT = ctx
        return _CONTEXT


def list_len(table: pa.Table, column: str) -> pd.Series:
    """Lengths of a list column (0 for null), for length and range expectations."""
    return pd.Series([len(v) if v is not None else 0 for v in table.column(column).to_pylist()], dtype="int64")


def is_not_in(table: pa.Table, column: str, values: set[str]) -> pd.Series:
    """1.0 where ``column`` is outside ``values``: its mean is the share a guard bounds."""
    return pd.Series([0.0 if v in values else 1.0 for v in table.column(column).to_pylist()], dtype="float64")


@dataclass(frozen=True)
class Contract:
    """The GX suite of one dataset.

    ``expectations`` is built on call (GX is imported lazily); ``derive`` adds
    computed columns to the frame the suite sees; ``describe`` is one line per
    rule, shown in the UI beside the result so a failure reads as a broken
    promise, not an expectation class name.
    """

    name: str
    dataset: str
    expectations: Callable[[], list[Any]]
    derive: Callable[[pa.Table], dict[str, pd.Series]] = field(default=lambda t: {})
    describe: tuple[str, ...] = ()

    def frame(self, table: pa.Table) -> pd.DataFrame:
        """Scalar columns of ``table`` plus the derived ones (list columns are left out)."""
        scalar = [f.name for f in table.schema if not pa.types.is_list(f.type) and not pa.types.is_large_list(f.type)]
        df = table.select(scalar).to_pandas()
        for name, series in self.derive(table).items():
            df[name] = series.to_numpy()
        return df


@dataclass
class ContractResult:
    """Outcome of one contract on one table."""

    name: str
    passed: bool
    rows: int
    expectations: int
    failures: list[dict[str, Any]]

    def summary(self) -> str:
        """One line per failed expectation: what, how many rows, sample values."""
        return "; ".join(
            f"{f['expectation']}({f['column'] or ''}): {f['unexpected_count']} bad"
            + (f", observed {f['observed_value']}" if f["observed_value"] is not None else "")
            + (f", e.g. {f['sample_unexpected'][:3]}" if f["sample_unexpected"] else "")
            for f in self.failures
        )


def _jsonable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, bool | int | float):
        return value
    return repr(value)[:200]


def run_suite(df: pd.DataFrame, expectations: list[Any], name: str) -> Any:
    """The raw GX suite result of ``expectations`` on ``df`` (fresh, uniquely named suite and batch)."""
    gx = gx_module()
    ctx = _context()
    uid = f"{name}-{uuid.uuid4().hex[:8]}"
    with _LOCK:
        source = ctx.data_sources.add_pandas(f"src-{uid}")
        batch_def = source.add_dataframe_asset(f"asset-{uid}").add_batch_definition_whole_dataframe(f"b-{uid}")
        suite = gx.ExpectationSuite(name=f"suite-{uid}")
        for exp in expectations:
            suite.add_expectation(exp)
    try:
        return batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite, result_format="SUMMARY")
    finally:
        with _LOCK:
            ctx.data_sources.delete(f"src-{uid}")


def failures_of(result: Any, sample_size: int = 5) -> list[dict[str, Any]]:
    """One dict per failed expectation of a GX suite result, with sample offending values."""
    out: list[dict[str, Any]] = []
    for r in result.results:
        if r.success:
            continue
        kwargs = {k: v for k, v in dict(r.expectation_config.kwargs).items() if k != "batch_id"}
        res = dict(r.result or {})
        info = dict(r.exception_info or {})
        out.append({
            "expectation": r.expectation_config.type,
            "column": kwargs.get("column"),
            "kwargs": json.loads(json.dumps(kwargs, default=str)),
            "unexpected_count": res.get("unexpected_count"),
            "element_count": res.get("element_count"),
            "sample_unexpected": [_jsonable(v) for v in (res.get("partial_unexpected_list") or [])[:sample_size]],
            "observed_value": _jsonable(res.get("observed_value")),
            "exception": info.get("exception_message") if info.get("raised_exception") else None,
        })
    return out


def validate(contract: Contract, table: pa.Table, sample_size: int = 5) -> ContractResult:
    """Run ``contract`` on ``table``."""
    expectations = contract.expectations()
    result = run_suite(contract.frame(table), expectations, contract.name)
    failures = failures_of(result, sample_size)
    return ContractResult(contract.name, bool(result.success) and not failures, table.num_rows,
                          len(expectations), failures)
