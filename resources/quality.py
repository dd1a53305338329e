"""Data-quality resource: a dataset's contract (``prmforge.contracts``) as a Dagster asset check.

The suites live in ``prmforge/contracts/`` beside the schemas they guard; this
resource only runs one and turns its :class:`~prmforge.contracts.ContractResult`
into an ``AssetCheckResult``: ERROR severity, ``passed`` only when every
expectation passed, and metadata naming each failed expectation with sample
offending values, so the UI shows *why* a gate closed.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from dagster import AssetCheckResult, AssetCheckSeverity, ConfigurableResource, MetadataValue
from pydantic import Field

from prmforge.contracts import Contract, ContractResult, validate


def check_metadata(result: ContractResult, contract: Contract) -> dict[str, Any]:
    """What the UI shows for a contract: its rules, counts, and each failed expectation."""
    metadata: dict[str, Any] = {
        "rows": result.rows,
        "expectations": result.expectations,
        "failed_expectations": len(result.failures),
    }
    if contract.describe:
        metadata["contract"] = MetadataValue.md("\n".join(f"- {line}" for line in contract.describe))
    for i, f in enumerate(result.failures):
        key = f"failed_{i}_{f['expectation']}" + (f"_{f['column']}" if f["column"] else "")
        metadata[key] = MetadataValue.json(f)
    if result.failures:
        metadata["failed"] = MetadataValue.text(result.summary())
    return metadata


class QualityResource(ConfigurableResource):
    """Runs dataset contracts (Great Expectations 1.x suites on an ephemeral context)."""

    sample_size: int = Field(default=5, description="offending values shown per failed expectation")

    def check(
        self,
        contract: Contract,
        table: pa.Table,
        *,
        asset_key: Any = None,
        extra_metadata: dict[str, Any] | None = None,
    ) -> AssetCheckResult:
        """Run ``contract`` on ``table`` as the blocking check named after the contract.

        ``asset_key`` is needed only when the check's function covers several
        assets (a multi-asset); a plain ``@asset_check`` may leave it None.
        """
        result = validate(contract, table, self.sample_size)
        kwargs: dict[str, Any] = {
            "passed": result.passed,
            "severity": AssetCheckSeverity.ERROR,
            "metadata": {**check_metadata(result, contract), **(extra_metadata or {})},
            "check_name": contract.name,
        }
        if asset_key is not None:
            kwargs["asset_key"] = asset_key
        return AssetCheckResult(**kwargs)
