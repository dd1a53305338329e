"""Small helpers shared by the asset modules."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    DataVersion,
    Failure,
    MetadataValue,
)

from prmforge.checks import CheckOutcome
from prmforge.errors import ConfigError


@contextmanager
def fail_fast_on_config_errors() -> Iterator[None]:
    """Fail the step at once, past its retry policy, when the user must fix something.

    Why: a missing source file or an unknown dataset fails identically on
    every attempt; three retries only hide the one line that says what to fix.
    """
    try:
        yield
    except ConfigError as exc:
        raise Failure(description=f"configuration error (not retried): {exc}", allow_retries=False) from exc


def upstream_metadata(context: AssetExecutionContext, asset: str) -> dict:
    """Metadata values of the latest materialisation of ``asset``.

    Large artefacts (models) are passed between stages as URIs in metadata,
    never through the IO manager.
    """
    event = context.instance.get_latest_materialization_event(AssetKey(asset))
    if event is None or event.asset_materialization is None:
        raise RuntimeError(f"{asset} has not been materialised yet; materialise it first")
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def upstream_uri(context: AssetExecutionContext, asset: str, storage: Any) -> str:
    """The ``uri`` metadata entry of the latest materialisation of ``asset``, as a full URL.

    Stages record model locations relative to the storage root (``models/policy/<hash>``), so a
    data home copied or mounted elsewhere resolves them under its own root (``storage``: the
    ``StorageResource``).
    """
    meta = upstream_metadata(context, asset)
    if "uri" not in meta:
        raise RuntimeError(f"latest materialisation of {asset} has no 'uri' metadata")
    return storage.get().resolve(str(meta["uri"]))


def metadata_values(values: dict[str, Any]) -> dict[str, Any]:
    """Plain core metadata for Dagster: dicts and lists become JSON entries, the rest stays as is."""
    return {k: MetadataValue.json(v) if isinstance(v, dict | list) else v for k, v in values.items()}


def check_result(asset: str, outcome: CheckOutcome) -> AssetCheckResult:
    """A core check outcome as Dagster's ``AssetCheckResult`` (blocking: ERROR, else WARN)."""
    return AssetCheckResult(check_name=outcome.name, asset_key=AssetKey(asset), passed=outcome.passed,
                            severity=AssetCheckSeverity.ERROR if outcome.blocking else AssetCheckSeverity.WARN,
                            metadata=metadata_values(outcome.metadata), description=outcome.description)


class _HashSink:
    """A write-only file object that feeds sha256 instead of storing bytes."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def table_data_version(table: pa.Table) -> DataVersion:
    """Content hash of a table, for ``Output(table, data_version=...)``.

    Why: downstream automation (``pipelines.automation``) retrains only when
    an input's *data version* changes. Dagster's default data version changes
    on every run, so a re-materialisation that produced identical rows would
    retrain the PRM; a content hash makes such no-op runs invisible.

    The hash covers column names, types and values in row order (schema
    metadata such as pandas annotations is ignored). Chunking does not matter:
    the table is combined into one chunk and streamed as Arrow IPC into
    sha256, so equal content gives equal versions; the only possible
    imprecision is a spurious *change* (never a missed one).
    """
    normalised = table.replace_schema_metadata(None).combine_chunks()
    sink = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), normalised.schema) as writer:
        writer.write_table(normalised)
    return DataVersion(sink.digest.hexdigest()[:32])


def mlflow_run_metadata(mlflow: Any, run_id: str) -> dict[str, Any]:
    """``mlflow_run_id`` and a link to the run in the MLflow UI (``MLflowResource.ui_url``)."""
    out: dict[str, Any] = {"mlflow_run_id": run_id}
    try:
        out["mlflow_run"] = MetadataValue.url(mlflow.run_url(run_id))
    except Exception:  # noqa: BLE001 - the link is a convenience; the id is always there
        pass
    return out
