"""Declared Arrow schemas of every dataset prmforge writes.

``Storage.write_dataset`` and the IO manager enforce these at write time, so a
stage that drifts from its contract fails loudly instead of handing later
stages a table they misread. The README's "Dataset layout" section documents
the same columns for users reading the data without Dagster.
"""

from __future__ import annotations

import pyarrow as pa

_str = pa.string()
_list_str = pa.list_(pa.string())

SEED_PROBLEMS = pa.schema(
    [
        pa.field("problem_id", _str, nullable=False),
        pa.field("dataset", _str, nullable=False),
        pa.field("problem", _str, nullable=False),
        pa.field("answer", _str, nullable=False),
        pa.field("split", _str, nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("meta", _str),  # JSON object
    ]
)

SEED_QUARANTINE = pa.schema(
    [
        pa.field("dataset", _str, nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("reason", _str, nullable=False),
        pa.field("detail", _str),
        pa.field("raw", _str),  # the offending record, truncated
    ]
)

SEED_DROPPED = pa.schema(
    [
        pa.field("problem_id", _str, nullable=False),
        pa.field("dataset", _str, nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("kind", _str, nullable=False),  # "duplicate" | "contaminated"
        pa.field("matched", _str),  # id it duplicates, or the benchmark it matched
        pa.field("detail", _str),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "seed_problems": SEED_PROBLEMS,
    "seed_problems_quarantine": SEED_QUARANTINE,
    "seed_problems_dropped": SEED_DROPPED,
}


def register_schema(dataset: str, schema: pa.Schema) -> pa.Schema:
    """Declare the schema of a dataset (called by the module that produces it)."""
    SCHEMAS[dataset] = schema
    return schema


def schema_for(dataset: str) -> pa.Schema | None:
    """The declared schema of ``dataset``, or None if it has none."""
    return SCHEMAS.get(dataset)
