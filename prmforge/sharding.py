"""Sharded, resumable batch work.

Long stages (rollouts, MC labelling) split their input into fixed shards. Each
finished shard is written atomically to ``shards/<dataset>/<partition>/<run_key>/``
the moment it is done, so a killed run, started again, recomputes only the
missing shards. The run key hashes the configuration and the input's content,
so a changed config or input never reuses stale shards. Work functions must be
deterministic per shard (seed derived from the shard index), which makes a
resumed result identical to an uninterrupted one.

Where shards run is a :class:`ShardExecutor`: :class:`LocalExecutor` (this
process, in shard order) by default, or
:class:`prmforge.distributed.ray_pool.RayExecutor` (a pool of Ray actors, one
engine each). Whatever runs them, the driver writes each finished shard, so
the stored result does not depend on the executor. A remote executor pickles
``work`` (cloudpickle) to every worker: it must build expensive state (an
engine) lazily on its first call, in the process that uses it.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

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
    tokens_computed: int = 0  # sum of ``token_column`` over the computed shards


ShardWork = Callable[[list[Any], int], pa.Table]


class ShardExecutor(ABC):
    """Runs ``work(chunk, index)`` on a set of shards and yields each result as it finishes."""

    @abstractmethod
    def map(self, work: ShardWork, shards: Sequence[tuple[int, list[Any]]]) -> Iterator[tuple[int, pa.Table]]:
        """Yield ``(index, table)`` once per shard, in completion order (any order)."""

    def describe(self) -> dict[str, Any]:
        """Where the work ran, for logs and metadata."""
        return {"executor": "local"}


class LocalExecutor(ShardExecutor):
    """This process, one shard after the other (the default: nothing to configure)."""

    def map(self, work: ShardWork, shards: Sequence[tuple[int, list[Any]]]) -> Iterator[tuple[int, pa.Table]]:
        for index, chunk in shards:
            yield index, work(chunk, index)


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
    executor: ShardExecutor | None = None,
    token_column: str | None = None,
) -> ShardedResult:
    """Run ``work(shard_items, shard_index)`` for every shard not yet stored.

    Returns the concatenation of all shards in shard order. ``on_progress`` is
    called after each computed shard (for Dagster logs and metadata); with a
    ``token_column`` its ``extra`` carries ``tokens`` and ``tokens_per_s``
    counted from the shards themselves, so remote workers need no side channel.
    """
    if shard_size <= 0:
        raise ValueError("shard_size must be positive")
    n_shards = (len(items) + shard_size - 1) // shard_size
    done = {i for i in storage.finished_shards(dataset, partition, run_key) if i < n_shards}
    todo = [i for i in range(n_shards) if i not in done]
    start = time.monotonic()
    computed_items = 0
    tokens = 0
    shards = [(i, list(items[i * shard_size : (i + 1) * shard_size])) for i in todo]
    runner = executor or LocalExecutor()
    for count, (i, table) in enumerate(runner.map(work, shards), start=1):
        if table.schema != schema:
            table = table.select(schema.names).cast(schema)
        storage.write_shard(dataset, partition, run_key, i, table)
        computed_items += min(shard_size, len(items) - i * shard_size)
        if token_column is not None:
            tokens += int(pc.sum(table.column(token_column)).as_py() or 0)
        if on_progress is not None:
            elapsed = time.monotonic() - start
            rate = computed_items / elapsed if elapsed > 0 else 0.0
            reused_items = sum(min(shard_size, len(items) - d * shard_size) for d in done)
            remaining = len(items) - (reused_items + computed_items)
            extra = {"tokens": float(tokens), "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0}
            on_progress(
                Progress(
                    shards_done=len(done) + count,
                    shards_total=n_shards,
                    items_done=min(len(items), reused_items + computed_items),
                    items_total=len(items),
                    elapsed_s=elapsed,
                    eta_s=(max(remaining, 0) / rate) if rate > 0 else None,
                    extra=extra if token_column is not None else {},
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
        tokens_computed=tokens,
    )
