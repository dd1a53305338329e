"""Storage resource and the Parquet IO manager built on it."""

from __future__ import annotations

import pyarrow as pa
from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext
from pydantic import Field

from prmforge.env import default_storage_root
from prmforge.storage import Storage


class StorageResource(ConfigurableResource):
    """The storage root every dataset, shard and model lives under.

    ``root`` is ``file:///...`` or ``s3://bucket/prefix``; S3 endpoint, region
    and credentials come from the environment (see ``prmforge.env``).
    """

    root: str = Field(default_factory=default_storage_root, description="file:// or s3:// URL")

    def get(self) -> Storage:
        return Storage(self.root)


class ParquetIOManager(ConfigurableIOManager):
    """Stores each asset output (a ``pyarrow.Table``) as one Parquet file.

    Path: ``<root>/datasets/<asset name>/<partition key>/data.parquet``. The
    dataset's declared schema (``prmforge.schemas``) is enforced on write and
    the write is atomic. Loading several partitions (e.g. ``prm_model`` reading
    every dataset's labels) concatenates them into one table. An output of a
    run over a partition range is refused (one table has no per-partition
    split; see ``handle_output``).
    """

    storage: StorageResource

    def _name(self, context: OutputContext | InputContext) -> str:
        return context.asset_key.path[-1]

    def handle_output(self, context: OutputContext, obj: pa.Table) -> None:
        if obj is None:
            return
        if not isinstance(obj, pa.Table):
            raise TypeError(f"{self._name(context)}: ParquetIOManager stores pyarrow.Table, got {type(obj).__name__}")
        if context.has_asset_partitions and not context.has_partition_key:
            # A run over a partition range (a single-run backfill). One table cannot be
            # split by partition here, and writing it unpartitioned would silently put
            # it at the wrong path. Assets that handle ranges write and report each
            # partition themselves (assets/seed.py).
            raise ValueError(
                f"{self._name(context)}: ParquetIOManager stores one partition per output, but this run covers "
                f"{len(context.asset_partition_keys)} partitions; the asset must handle the range itself "
                "(see assets/seed.py) or run one partition per run"
            )
        partition = context.partition_key if context.has_partition_key else None
        url = self.storage.get().write_dataset(self._name(context), obj, partition)
        context.add_output_metadata({"path": url, "rows": obj.num_rows})

    def load_input(self, context: InputContext) -> pa.Table:
        storage = self.storage.get()
        name = self._name(context)
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            tables = [storage.read_dataset(name, k) for k in keys if storage.dataset_exists(name, k)]
            if not tables:
                raise FileNotFoundError(f"no partition of {name!r} among {keys[:5]} exists under {storage.root}")
            return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        return storage.read_dataset(name)
