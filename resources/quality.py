"""Data-quality resource: Great Expectations 1.x suites as Dagster asset-check results.

Every stage states its data contract as a short list of GX expectations and
calls :meth:`QualityResource.validate` from an asset check. The helper runs the
expectations on an *ephemeral* GX context (nothing written to disk, no
analytics, no progress bars) and turns the suite result into one
``AssetCheckResult``: ERROR severity, ``passed`` only when every expectation
passed, and metadata naming each failed expectation with a sample of the
offending values, so the UI shows *why* a gate closed.

Great Expectations costs ~3 s to import, so it is imported on first use only;
callers build their expectation objects inside the check function
(``import great_expectations as gx`` there, after the resource has loaded it).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pyarrow as pa
from dagster import AssetCheckResult, AssetCheckSeverity, ConfigurableResource, MetadataValue
from pydantic import Field

_LOCK = threading.Lock()
_CONTEXT: Any = None


def gx_module() -> Any:
    """Import Great Expectations with analytics off (no network) and return it."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


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


def _to_pandas(data: Any) -> Any:
    if isinstance(data, pa.Table):
        return data.to_pandas()
    if isinstance(data, pa.RecordBatch):
        return data.to_pandas()
    return data


def _jsonable(value: Any) -> Any:
    """Offending values as something metadata can show (NaN/None become None)."""
    try:
        if value is None or (isinstance(value, float) and value != value):
            return None
    except Exception:  # noqa: BLE001 - exotic objects: show their repr
        return repr(value)[:200]
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, int | float | bool):
        return value
    return repr(value)[:200]


def summarise_result(result: Any, sample_size: int = 5) -> tuple[bool, list[dict[str, Any]]]:
    """(suite passed, one dict per failed expectation) from a GX suite result."""
    failures: list[dict[str, Any]] = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = {k: v for k, v in dict(cfg.kwargs).items() if k != "batch_id"}
        res = dict(r.result or {})
        info = dict(r.exception_info or {})
        failures.append(
            {
                "expectation": cfg.type,
                "kwargs": json.loads(json.dumps(kwargs, default=str)),
                "unexpected_count": res.get("unexpected_count"),
                "element_count": res.get("element_count"),
                "sample_unexpected": [_jsonable(v) for v in (res.get("partial_unexpected_list") or [])[:sample_size]],
                "observed_value": _jsonable(res.get("observed_value")),
                "exception": info.get("exception_message") if info.get("raised_exception") else None,
            }
        )
    return bool(result.success), failures


class QualityResource(ConfigurableResource):
    """Runs Great Expectations 1.x suites on an ephemeral context."""

    sample_size: int = Field(default=5, description="offending values shown per failed expectation")

    def run_suite(self, data: Any, expectations: list[Any], name: str) -> Any:
        """Validate ``data`` (pyarrow Table or pandas DataFrame); return the raw GX suite result.

        Each call builds a fresh, uniquely named suite and batch so concurrent
        checks in one process never share GX state.
        """
        import uuid

        gx = gx_module()
        ctx = _context()
        uid = f"{name}-{uuid.uuid4().hex[:8]}"
        with _LOCK:
            source = ctx.data_sources.add_pandas(f"src-{uid}")
            asset = source.add_dataframe_asset(f"asset-{uid}")
            batch_def = asset.add_batch_definition_whole_dataframe(f"batch-{uid}")
            suite = gx.ExpectationSuite(name=f"suite-{uid}")
            for exp in expectations:
                suite.add_expectation(exp)
        try:
            batch = batch_def.get_batch(batch_parameters={"dataframe": _to_pandas(data)})
            return batch.validate(suite, result_format="SUMMARY")
        finally:
            with _LOCK:
                try:
                    ctx.data_sources.delete(f"src-{uid}")
                except Exception:  # noqa: BLE001 - cleanup only; the result stands
                    pass

    def validate(
        self,
        data: Any,
        expectations: list[Any],
        name: str,
        *,
        asset_key: Any = None,
        check_name: str | None = None,
        extra_metadata: dict[str, Any] | None = None,
    ) -> AssetCheckResult:
        """Run ``expectations`` on ``data`` and return one blocking-gate ``AssetCheckResult``.

        ``name`` names the suite and, unless ``check_name`` is given, the check.
        ``asset_key`` is needed only when the check's function covers several
        assets (a multi-asset); a plain ``@asset_check`` may leave it None.
        """
        result = self.run_suite(data, expectations, name)
        passed, failures = summarise_result(result, self.sample_size)
        rows = data.num_rows if isinstance(data, pa.Table) else len(data)
        metadata: dict[str, Any] = {
            "rows": rows,
            "expectations": len(expectations),
            "failed_expectations": len(failures),
        }
        for i, f in enumerate(failures):
            column = f["kwargs"].get("column")
            key = f"failed_{i}_{f['expectation']}" + (f"_{column}" if column else "")
            metadata[key] = MetadataValue.json(f)
        if failures:
            metadata["failed"] = MetadataValue.text(
                "; ".join(
                    f"{f['expectation']}({f['kwargs'].get('column', '')}): {f['unexpected_count']} bad, "
                    f"e.g. {f['sample_unexpected'][:3]}"
                    for f in failures
                )
            )
        metadata.update(extra_metadata or {})
        kwargs: dict[str, Any] = {
            "passed": passed,
            "severity": AssetCheckSeverity.ERROR,
            "metadata": metadata,
            "check_name": check_name or name,
        }
        if asset_key is not None:
            kwargs["asset_key"] = asset_key
        return AssetCheckResult(**kwargs)
