"""Sharded, resumable batch work.

Long stages (rollouts, MC labelling) split their input into fixed shards. Each
finished shard is written atomically to ``shards/<dataset>/<partition>/<run_key>/``
the moment it is done, so a killed run, started again, recomputes only the
missing shards. The run key hashes the configuration and the input's content,
so a changed config or input never reuses stale shards. Work functions must be
deterministic per shard (seed derived from the shard index), which makes a
resumed result identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa

from prmforge.storage import Storage

T = TypeVar("T")


def fingerprint(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable object (configs, id lists)."""
    data = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def shard_seed(base_seed: int, shard_index: int) -> int:
    """Seed of one shard: independent of which shards already ran."""
    return int(hashlib.sha256(f"{base_seed}:{shard_index}".encode()).hexdigest()[:8], 16)


@dataclass
class Progress:
    shards_done: int
    shards_total: int
    items_done: int
    items_total: int
    elapsed_s: float
    eta_s: float | None
    extra: dict[str, float]


@dataclass
class ShardedResult:
    table: pa.Table
    shards_total: int
    shards_reused: int
    shards_computed: int
    elapsed_s: float


def run_sharded(
    storage: Storage,
    dataset: str,
    partition: str,
    run_key: str,
    items: Sequence[T],
    shard_size: int,
    work: Callable[[list[T], int], pa.Table],
    schema: pa.Schema,
    on_progress: Callable[[Progress], None] | None = None,
) -> ShardedResult:
    """Run ``work(shard_items, shard_index)`` for every shard not yet stored.

    Returns the concatenation of all shards in shard order. ``on_progress`` is
    called after each computed shard (for Dagster logs and metadata).
    """
    if shard_size <= 0:
        raise ValueError("shard_size must be positive")
    n_shards = (len(items) + shard_size - 1) // shard_size
    done = {i for i in storage.finished_shards(dataset, partition, run_key) if i < n_shards}
    todo = [i for i in range(n_shards) if i not in done]
    start = time.monotonic()
    computed_items = 0
    for count, i in enumerate(todo, start=1):
        chunk = list(items[i * shard_size : (i + 1) * shard_size])
        table = work(chunk, i)
        if table.schema != schema:
            table = table.select(schema.names).cast(schema)
        storage.write_shard(dataset, partition, run_key, i, table)
        computed_items += len(chunk)
        if on_progress is not None:
            elapsed = time.monotonic() - start
            rate = computed_items / elapsed if elapsed > 0 else 0.0
            remaining = len(items) - (len(done) * shard_size + computed_items)
            on_progress(
                Progress(
                    shards_done=len(done) + count,
                    shards_total=n_shards,
                    items_done=min(len(items), len(done) * shard_size + computed_items),
                    items_total=len(items),
                    elapsed_s=elapsed,
                    eta_s=(max(remaining, 0) / rate) if rate > 0 else None,
                    extra={},
                )
            )
    tables = storage.read_shards(dataset, partition, run_key, range(n_shards)) if n_shards else []
    table = pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
    return ShardedResult(
        table=table,
        shards_total=n_shards,
        shards_reused=len(done),
        shards_computed=len(todo),
        elapsed_s=time.monotonic() - start,
    )
