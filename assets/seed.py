"""Seed-problem ingestion: one multi-asset writing accepted, quarantined and dropped rows.

Thin wrapper around :func:`prmforge.ingest.ingest_dataset`; the partition key
is the dataset key of the registry (``datasets.yaml``). Two blocking checks
gate downstream stages: ``rows_conserved`` (every row read is accounted for)
and ``seed_quality`` (Great Expectations: ids unique and non-null, problem and
answer non-empty, split in the allowed set).

One run, one dataset or many
----------------------------
A run of one partition (``prmforge run``, the sensor, a job launched from the
UI) yields the three tables as ``Output``s; the IO manager stores them.

A backfill over many datasets runs the stage as ONE run over a partition
range (``BackfillPolicy.single_run()``, ``pipelines/automation.py``). The
asset then ingests the datasets one after another and, for each, writes its
three tables itself (the IO manager's layout, ``Storage.write_dataset``) and
reports one ``AssetMaterialization`` per table and one check evaluation per
check, all scoped to that partition. Why not one ``Output`` of a dict: Dagster
1.13 stamps an ``Output``'s single data version and its metadata on *every*
partition of the range, and records every partition as materialised. Per
partition events keep each dataset's data version its own content hash (an
unchanged dataset triggers nothing downstream) and let one bad dataset fail
alone:

* a dataset whose source cannot be read is logged and skipped; its stored
  partition (if any) is left as it was, the other datasets are written, and
  the step fails at the end naming every failed dataset. The backfill then
  marks only those partitions failed (Dagster subtracts the partitions a
  ranged run did materialise);
* a failed blocking check fails the step after every dataset was processed,
  as in a one-dataset run;
* a retry of the step (``RetryPolicy``) ingests the whole range again; that
  is idempotent (atomic writes, same content hashes).

Datasets are ingested in partition order and each is written before the next
is read, so dedupe across partitions sees exactly what a sequence of
one-dataset runs would see.
"""


import inspect
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetOut,
    AssetRecordsFilter,
    Config,
    MetadataValue,
    Output,
    multi_asset,
)

from assets.common import fail_fast_on_config_errors, table_data_version
from assets.partitions import dataset_partitions
from pipelines.automation import REMOTE_RETRY, SINGLE_RUN_BACKFILL
from prmforge.contracts.datasets import dropped_contract, quarantine_contract, seed_contract
from prmforge.errors import ConfigError
from prmforge.ingest import (
    QUARANTINE_REASONS,
    IngestResult,
    IngestSettings,
    ingest_dataset,
    spec_for,
)
from prmforge.storage import Storage
from resources.quality import QualityResource
from resources.settings import SettingsResource, stage_config
from resources.storage import StorageResource

# Dagster's documented run and materialisation tags (system tags), by value: Dagster exports no names for them.
DATA_VERSION_TAG = "dagster/data_version"
DATA_VERSION_IS_USER_PROVIDED_TAG = "dagster/data_version_is_user_provided"
BACKFILL_ID_TAG = "dagster/backfill"

SEED = "seed_problems"
QUARANTINE = "seed_problems_quarantine"
DROPPED = "seed_problems_dropped"


SeedConfig = stage_config(SEED)


def _settings(settings: SettingsResource, config: Config) -> IngestSettings:
    return settings.stage(SEED, config)


class SeedIngestError(RuntimeError):
    """Some datasets of a multi-dataset run could not be ingested (the others were written)."""


@dataclass(frozen=True)
class _Table:
    """One of the three outputs of ingesting a dataset, with its metadata."""

    name: str
    table: pa.Table
    metadata: dict[str, Any]


def _tables(result: IngestResult, source: str) -> list[_Table]:
    """The three outputs of one dataset, in the order they are reported (seed first, as before)."""
    counts = result.counts()
    return [
        _Table(SEED, result.accepted, {
            **counts,
            "source": source,
            "quarantine_reasons": MetadataValue.json(result.reasons),
            "contaminated_by": MetadataValue.json(result.contaminated_by),
        }),
        _Table(QUARANTINE, result.quarantine, {
            "quarantined": result.quarantined_count,
            "reasons": MetadataValue.json(result.reasons),
            "reason_meanings": MetadataValue.json({r: QUARANTINE_REASONS.get(r, "") for r in result.reasons}),
        }),
        _Table(DROPPED, result.dropped, {
            "deduplicated": result.deduplicated_count,
            "decontaminated": result.decontaminated_count,
            "contaminated_by": MetadataValue.json(result.contaminated_by),
        }),
    ]


def _checks(result: IngestResult, quality: QualityResource) -> list[AssetCheckResult]:
    """``rows_conserved`` and the contracts of the three tables of one dataset."""
    counts = result.counts()
    return [
        AssetCheckResult(
            check_name="rows_conserved",
            asset_key=AssetKey(SEED),
            passed=result.conserved,
            severity=AssetCheckSeverity.ERROR,
            metadata={**counts, "accounted": counts["accepted"] + counts["quarantined"] + counts["deduplicated"]
                      + counts["decontaminated"]},
        ),
        quality.check(seed_contract(), result.accepted, asset_key=AssetKey(SEED)),
        quality.check(quarantine_contract(sorted(QUARANTINE_REASONS)), result.quarantine,
                      asset_key=AssetKey(QUARANTINE)),
        quality.check(dropped_contract(), result.dropped, asset_key=AssetKey(DROPPED)),
    ]


def _ingest(key: str, ingest: IngestSettings, store: Storage) -> tuple[str, IngestResult]:
    spec = spec_for(key, ingest.registry_path, store)
    return spec.source, ingest_dataset(spec, ingest, store)


def _one_partition(context: AssetExecutionContext, ingest: IngestSettings, store: Storage,
                   quality: QualityResource) -> Iterator[Any]:
    """One dataset: ``Output``s the IO manager stores, then the checks."""
    key = context.partition_key
    source, result = _ingest(key, ingest, store)
    context.log.info(f"{key}: {result.counts()}; quarantine reasons {result.reasons}")
    for out in _tables(result, source):
        yield Output(out.table, output_name=out.name, metadata=out.metadata,
                     data_version=table_data_version(out.table))
    yield from _checks(result, quality)


def _target_type() -> type:
    """The class of ``AssetCheckEvaluation.target_materialization_data``.

    Dagster does not export it at top level; it is taken from the public
    ``AssetCheckEvaluation``'s signature instead of importing Dagster's private modules.
    """
    annotation = inspect.signature(AssetCheckEvaluation).parameters["target_materialization_data"].annotation
    return next(t for t in typing.get_args(annotation) if t is not type(None))


def _partition_evaluation(context: AssetExecutionContext, result: AssetCheckResult,
                          partition: str) -> AssetCheckEvaluation:
    """``result`` as the evaluation of ``partition``'s check.

    Why: ``AssetCheckResult`` takes its partition from the step, which has
    none in a ranged run; the evaluation must name the dataset it checked so
    downstream gates (``all_deps_blocking_checks_passed``) see it per partition.
    """
    key = result.asset_key
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    target = (_target_type()(
        run_id=records[0].run_id, storage_id=records[0].storage_id, timestamp=records[0].timestamp)
        if records else None)
    return AssetCheckEvaluation(
        asset_key=key,
        check_name=str(result.check_name),
        passed=result.passed,
        metadata=result.metadata,
        target_materialization_data=target,
        severity=result.severity,
        description=result.description,
        blocking=True,
        partition=partition,
    )


def _partition_range(context: AssetExecutionContext, ingest: IngestSettings, store: Storage,
                     quality: QualityResource) -> Iterator[Any]:
    """Many datasets in one run (a single-run backfill); see the module docstring."""
    keys = list(context.partition_keys)
    backfill = context.run.tags.get(BACKFILL_ID_TAG)
    failed: dict[str, str] = {}
    config_errors: dict[str, str] = {}  # all failures of this kind: retrying cannot help
    context.log.info(f"ingesting {len(keys)} datasets in one run: {', '.join(keys)}")
    for key in keys:
        try:
            source, result = _ingest(key, ingest, store)
        except Exception as exc:  # one bad dataset must not lose the others' work
            failed[key] = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ConfigError):
                config_errors[key] = str(exc)
            context.log.error(f"{key}: not ingested, its stored partition is unchanged: {failed[key]}")
            continue
        context.log.info(f"{key}: {result.counts()}; quarantine reasons {result.reasons}")
        for out in _tables(result, source):
            url = store.write_dataset(out.name, out.table, key)  # atomic, schema enforced
            tags = {DATA_VERSION_TAG: table_data_version(out.table).value, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}
            if backfill:
                tags[BACKFILL_ID_TAG] = backfill
            yield AssetMaterialization(asset_key=out.name, partition=key, tags=tags,
                                       metadata={**out.metadata, "path": url, "rows": out.table.num_rows})
        for check_result in _checks(result, quality):
            yield _partition_evaluation(context, check_result, key)
    if failed:
        message = (f"{len(failed)} of {len(keys)} datasets could not be ingested (the other "
                   f"{len(keys) - len(failed)} were written): " + "; ".join(f"{k}: {m}" for k, m in failed.items()))
        raise ConfigError(message) if set(failed) == set(config_errors) else SeedIngestError(message)


@multi_asset(
    outs={
        # Not required: a multi-dataset run reports per-partition materialisations instead
        # of Outputs (module docstring). A one-dataset run always yields all three.
        SEED: AssetOut(
            description="Normalised seed problems of one dataset (problem_id, dataset, problem, answer, split, "
            "source_row, meta JSON). Path: <root>/datasets/seed_problems/<dataset>/data.parquet",
            is_required=False,
        ),
        QUARANTINE: AssetOut(description="Rows that could not be ingested, with a reason column.",
                             is_required=False),
        DROPPED: AssetOut(description="Duplicates and benchmark-contaminated problems, with what they matched.",
                          is_required=False),
    },
    partitions_def=dataset_partitions,
    group_name="seed",
    # No automation condition: the new-dataset sensor and the refresh schedule request it.
    backfill_policy=SINGLE_RUN_BACKFILL,  # a backfill over many datasets is one run (module docstring)
    retry_policy=REMOTE_RETRY,
    check_specs=[
        AssetCheckSpec("rows_conserved", asset=SEED, blocking=True, partitions_def=dataset_partitions,
                       description="rows read = accepted + quarantined + deduplicated + decontaminated"),
        AssetCheckSpec("seed_quality", asset=SEED, blocking=True, partitions_def=dataset_partitions,
                       description="GX: ids unique and non-null, problem/answer non-empty, split allowed"),
        AssetCheckSpec("quarantine_contract", asset=QUARANTINE, blocking=True, partitions_def=dataset_partitions,
                       description="GX: every quarantined row has a known reason"),
        AssetCheckSpec("dropped_contract", asset=DROPPED, blocking=True, partitions_def=dataset_partitions,
                       description="GX: every dropped row is a duplicate or contaminated, and names what it matched"),
    ],
)
def seed_problems(
    context: AssetExecutionContext,
    config: SeedConfig,
    settings: SettingsResource,
    storage: StorageResource,
    quality: QualityResource,
) -> Iterator[Any]:
    """Ingest the run's dataset, or each dataset of its partition range (a single-run backfill)."""
    ingest = _settings(settings, config)
    store = storage.get()
    with fail_fast_on_config_errors():
        if context.has_partition_key:
            yield from _one_partition(context, ingest, store, quality)
        else:
            yield from _partition_range(context, ingest, store, quality)
