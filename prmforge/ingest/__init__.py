"""Seed-problem ingestion: sources → normalised, deduplicated, decontaminated problems.

Entry point: :func:`ingest_dataset` (one registry entry → :class:`IngestResult`).
Never imports dagster; ``assets/seed.py`` is a thin wrapper.
"""

from prmforge.ingest.core import (
    QUARANTINE_REASONS,
    SEED_DATASET,
    IngestResult,
    ingest_dataset,
    ingest_records,
    iter_source,
    spec_for,
)
from prmforge.ingest.readers import SourceError
from prmforge.ingest.settings import ALLOWED_SPLITS, BenchmarkSpec, IngestSettings

__all__ = [
    "ALLOWED_SPLITS",
    "QUARANTINE_REASONS",
    "SEED_DATASET",
    "BenchmarkSpec",
    "IngestResult",
    "IngestSettings",
    "SourceError",
    "ingest_dataset",
    "ingest_records",
    "iter_source",
    "spec_for",
]
