"""Seed-problem ingestion: one multi-asset writing accepted, quarantined and dropped rows.

Thin wrapper around :func:`prmforge.ingest.ingest_dataset`; the partition key
is the dataset key of the registry (``datasets.yaml``). Two blocking checks
gate downstream stages: ``rows_conserved`` (every row read is accounted for)
and ``seed_quality`` (Great Expectations: ids unique and non-null, problem and
answer non-empty, split in the allowed set).
"""


from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    Config,
    MetadataValue,
    Output,
    multi_asset,
)
from pydantic import Field

from assets.common import table_data_version
from assets.partitions import dataset_partitions
from prmforge.ingest import (
    ALLOWED_SPLITS,
    QUARANTINE_REASONS,
    BenchmarkSpec,
    IngestSettings,
    ingest_dataset,
    spec_for,
)
from resources.quality import QualityResource
from resources.settings import SettingsResource
from resources.storage import StorageResource

SEED = "seed_problems"
QUARANTINE = "seed_problems_quarantine"
DROPPED = "seed_problems_dropped"


class BenchmarkConfig(Config):
    """One evaluation benchmark (see ``prmforge.ingest.BenchmarkSpec``)."""

    name: str
    path: str
    format: str = "auto"
    column: str | None = None
    mode: str = "ngram"


class SeedConfig(Config):
    """Run-config overrides of the ``ingest`` settings; None takes the profile's value."""

    max_problem_chars: int | None = None
    max_answer_chars: int | None = None
    ngram: int | None = None
    world_size: int | None = None
    world_seed: int | None = None
    eval_benchmarks: list[BenchmarkConfig] | None = Field(default=None, description="replaces the profile's list")
    registry_path: str | None = Field(default=None, description="datasets.yaml to read (default: the repo's)")


def _settings(settings: SettingsResource, config: SeedConfig) -> IngestSettings:
    overrides: dict[str, Any] = config.model_dump(exclude={"eval_benchmarks"})
    if config.eval_benchmarks is not None:
        overrides["eval_benchmarks"] = [BenchmarkSpec(**b.model_dump()) for b in config.eval_benchmarks]
    return settings.stage(IngestSettings, "ingest", **overrides)


def seed_expectations() -> list[Any]:
    """The GX contract of ``seed_problems`` (built on call: GX is imported lazily)."""
    from resources.quality import gx_module

    gxe = gx_module().expectations
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="problem_id"),
        gxe.ExpectColumnValuesToBeUnique(column="problem_id"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="problem", min_value=1),
        gxe.ExpectColumnValueLengthsToBeBetween(column="answer", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(ALLOWED_SPLITS)),
    ]


@multi_asset(
    outs={
        SEED: AssetOut(
            description="Normalised seed problems of one dataset (problem_id, dataset, problem, answer, split, "
            "source_row, meta JSON). Path: <root>/datasets/seed_problems/<dataset>/data.parquet",
        ),
        QUARANTINE: AssetOut(description="Rows that could not be ingested, with a reason column."),
        DROPPED: AssetOut(description="Duplicates and benchmark-contaminated problems, with what they matched."),
    },
    partitions_def=dataset_partitions,
    group_name="seed",
    check_specs=[
        AssetCheckSpec("rows_conserved", asset=SEED, blocking=True, partitions_def=dataset_partitions,
                       description="rows read = accepted + quarantined + deduplicated + decontaminated"),
        AssetCheckSpec("seed_quality", asset=SEED, blocking=True, partitions_def=dataset_partitions,
                       description="GX: ids unique and non-null, problem/answer non-empty, split allowed"),
    ],
)
def seed_problems(
    context: AssetExecutionContext,
    config: SeedConfig,
    settings: SettingsResource,
    storage: StorageResource,
    quality: QualityResource,
) -> Iterator[Any]:
    """Ingest the partition's dataset from its registered source."""
    key = context.partition_key
    ingest = _settings(settings, config)
    store = storage.get()
    spec = spec_for(key, ingest.registry_path, store)
    result = ingest_dataset(spec, ingest, store)
    counts = result.counts()
    context.log.info(f"{key}: {counts}; quarantine reasons {result.reasons}")

    summary: dict[str, Any] = {
        **counts,
        "source": spec.source,
        "quarantine_reasons": MetadataValue.json(result.reasons),
        "contaminated_by": MetadataValue.json(result.contaminated_by),
    }
    yield Output(result.accepted, output_name=SEED, metadata=summary,
                 data_version=table_data_version(result.accepted))
    yield Output(result.quarantine, output_name=QUARANTINE,
                 metadata={"quarantined": result.quarantined_count, "reasons": MetadataValue.json(result.reasons),
                           "reason_meanings": MetadataValue.json(
                               {r: QUARANTINE_REASONS.get(r, "") for r in result.reasons})},
                 data_version=table_data_version(result.quarantine))
    yield Output(result.dropped, output_name=DROPPED,
                 metadata={"deduplicated": result.deduplicated_count,
                           "decontaminated": result.decontaminated_count,
                           "contaminated_by": MetadataValue.json(result.contaminated_by)},
                 data_version=table_data_version(result.dropped))

    yield AssetCheckResult(
        check_name="rows_conserved",
        asset_key=AssetKey(SEED),
        passed=result.conserved,
        severity=AssetCheckSeverity.ERROR,
        metadata={**counts, "accounted": counts["accepted"] + counts["quarantined"] + counts["deduplicated"]
                  + counts["decontaminated"]},
    )
    yield quality.validate(result.accepted, seed_expectations(), "seed_quality", asset_key=AssetKey(SEED),
                           check_name="seed_quality")
