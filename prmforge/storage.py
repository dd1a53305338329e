"""One storage abstraction for every dataset, shard and model folder.

Layout under the storage root (``file://...`` or ``s3://bucket/prefix``)::

    datasets/<dataset>/<partition>/data.parquet   partitioned datasets
    datasets/<dataset>/data.parquet               unpartitioned datasets
    shards/<dataset>/<partition>/<run_key>/shard-00000.parquet
    models/<name>/<version>/...                   HF-format folders, ``_COMPLETE`` last
    incoming/<dataset>/...                        files dropped for ingestion

Every Parquet write is atomic: locally the file is written under a temporary
name in the same directory and renamed over the target (``os.replace``); on S3
the object is uploaded in one PUT (or one multipart upload, which S3 also makes
visible only on completion). A reader therefore sees either the old complete
file or the new complete file, even if the writer is killed mid-write.
"""

from __future__ import annotations

import io
import os
import posixpath
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from prmforge.env import default_storage_root, s3_options_from_env
from prmforge.names import validate_name

COMPLETE_MARKER = "_COMPLETE"


class StorageError(RuntimeError):
    """A storage operation failed; the message always names the URL involved."""


class SchemaMismatchError(ValueError):
    """A table does not match the declared schema of its dataset."""


def enforce_schema(table: pa.Table, schema: pa.Schema, dataset: str) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order, cast safely.

    Missing columns, extra columns and unsafe casts raise
    :class:`SchemaMismatchError` naming the dataset and the column.
    """
    names = set(table.column_names)
    missing = [f.name for f in schema if f.name not in names]
    extra = sorted(names - {f.name for f in schema})
    if missing or extra:
        raise SchemaMismatchError(f"dataset {dataset!r}: missing columns {missing}, unexpected columns {extra}")
    columns = []
    for f in schema:
        col = table.column(f.name)
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaMismatchError(
                    f"dataset {dataset!r}: column {f.name!r} has type {col.type}, expected {f.type}: {exc}"
                ) from exc
        if not f.nullable and col.null_count:
            raise SchemaMismatchError(f"dataset {dataset!r}: column {f.name!r} has {col.null_count} nulls")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


# Top-level folders of a storage root: a relative reference starting with one of these is
# a stored object; anything else without a scheme (``Qwen/Qwen2.5-Math-1.5B``) is a hub id.
STORED_PREFIXES = ("models/", "datasets/", "checkpoints/", "shards/", "incoming/", "mlflow/")


@dataclass
class Storage:
    """A storage root plus the fsspec filesystem that reaches it."""

    root: str = field(default_factory=default_storage_root)
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        parsed = urlparse(self.root)
        if parsed.scheme in ("", "file"):
            local = parsed.path if parsed.scheme == "file" else self.root
            self.protocol = "file"
            self.base = str(Path(local).resolve())
            self.fs = fsspec.filesystem("file")
        elif parsed.scheme in ("s3", "s3a"):
            self.protocol = "s3"
            self.base = (parsed.netloc + parsed.path).rstrip("/")
            opts = s3_options_from_env()
            opts.update(self.storage_options or {})
            # Fresh instance: a cached one may point at an endpoint that is gone.
            self.fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
        else:
            raise StorageError(f"unsupported storage root {self.root!r}: use file:// or s3://")

    # ---- paths ---------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Filesystem path (no scheme) of a key under the root."""
        return posixpath.join(self.base, *parts)

    def url(self, *parts: str) -> str:
        """Full URL (``file://`` or ``s3://``) of a key under the root."""
        p = self.path(*parts)
        return f"file://{p}" if self.protocol == "file" else f"s3://{p}"

    def dataset_key(self, dataset: str, partition: str | None = None) -> tuple[str, ...]:
        validate_name(dataset, "dataset")
        if partition is None:
            return ("datasets", dataset)
        return ("datasets", dataset, validate_name(partition, "partition"))

    def dataset_url(self, dataset: str, partition: str | None = None) -> str:
        return self.url(*self.dataset_key(dataset, partition), "data.parquet")

    # ---- raw bytes -----------------------------------------------------
    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` (no scheme) so readers never see a partial file."""
        try:
            if self.protocol == "file":
                directory = os.path.dirname(path)
                os.makedirs(directory, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, path)
                except BaseException:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    raise
            else:
                self.fs.pipe_file(path, data)
        except Exception as exc:
            raise StorageError(f"could not write {self._show(path)}: {type(exc).__name__}: {exc}") from exc

    def read_bytes(self, path: str) -> bytes:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self._show(path)} does not exist") from exc
        except Exception as exc:
            raise StorageError(f"could not read {self._show(path)}: {type(exc).__name__}: {exc}") from exc

    def exists(self, path: str) -> bool:
        try:
            return self.fs.exists(path)
        except Exception as exc:
            raise StorageError(f"could not reach {self._show(path)}: {type(exc).__name__}: {exc}") from exc

    def ref(self, uri: str) -> str:
        """``uri`` relative to the storage root when it lies under it (else unchanged).

        What stages record (Dagster metadata, MLflow tags, ``prm_config.json``):
        a data home copied or mounted elsewhere keeps resolving its own models.
        """
        for prefix in (self.url() + "/", self.base + "/"):
            if uri.startswith(prefix):
                return uri[len(prefix):]
        return uri

    def resolve(self, ref: str) -> str:
        """The full URL of a storage-relative ``ref``; URLs, absolute paths and hub ids pass unchanged."""
        if "://" in ref or ref.startswith(("/", "~", ".")) or not ref.startswith(STORED_PREFIXES):
            return ref
        return self.url(*ref.split("/"))

    def _show(self, path: str) -> str:
        return f"file://{path}" if self.protocol == "file" else f"s3://{path}"

    # ---- parquet -------------------------------------------------------
    def write_parquet(self, path: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes_atomic(path, buf.getvalue())

    def read_parquet(self, path: str, schema: pa.Schema | None = None) -> pa.Table:
        data = self.read_bytes(path)
        return pq.read_table(io.BytesIO(data), schema=schema)

    def write_dataset(
        self, dataset: str, table: pa.Table, partition: str | None = None, schema: pa.Schema | None = None
    ) -> str:
        """Write a dataset (enforcing its declared schema) and return its URL."""
        from prmforge.schemas import schema_for

        schema = schema or schema_for(dataset)
        if schema is not None:
            table = enforce_schema(table, schema, dataset)
        path = self.path(*self.dataset_key(dataset, partition), "data.parquet")
        self.write_parquet(path, table)
        return self._show(path)

    def read_dataset(self, dataset: str, partition: str | None = None) -> pa.Table:
        return self.read_parquet(self.path(*self.dataset_key(dataset, partition), "data.parquet"))

    def dataset_exists(self, dataset: str, partition: str | None = None) -> bool:
        return self.exists(self.path(*self.dataset_key(dataset, partition), "data.parquet"))

    def list_partitions(self, dataset: str) -> list[str]:
        base = self.path("datasets", validate_name(dataset, "dataset"))
        if not self.exists(base):
            return []
        out = []
        for entry in self.fs.ls(base, detail=False):
            name = posixpath.basename(entry.rstrip("/"))
            if self.exists(posixpath.join(entry, "data.parquet")):
                out.append(name)
        return sorted(out)

    # ---- shards (resumable work) ----------------------------------------
    def shard_dir(self, dataset: str, partition: str, run_key: str) -> str:
        return self.path("shards", validate_name(dataset, "dataset"), validate_name(partition, "partition"),
                         validate_name(run_key, "run key"))

    def write_shard(self, dataset: str, partition: str, run_key: str, index: int, table: pa.Table) -> None:
        self.write_parquet(posixpath.join(self.shard_dir(dataset, partition, run_key), f"shard-{index:05d}.parquet"),
                           table)

    def finished_shards(self, dataset: str, partition: str, run_key: str) -> set[int]:
        d = self.shard_dir(dataset, partition, run_key)
        if not self.exists(d):
            return set()
        done = set()
        for entry in self.fs.ls(d, detail=False):
            name = posixpath.basename(entry)
            if name.startswith("shard-") and name.endswith(".parquet"):
                done.add(int(name[len("shard-"):-len(".parquet")]))
        return done

    def read_shards(self, dataset: str, partition: str, run_key: str, indices: Iterable[int]) -> list[pa.Table]:
        d = self.shard_dir(dataset, partition, run_key)
        return [self.read_parquet(posixpath.join(d, f"shard-{i:05d}.parquet")) for i in sorted(indices)]

    # ---- folders (models, checkpoints) -----------------------------------
    def put_dir(self, local_dir: str | Path, *key: str) -> str:
        """Upload a local folder; ``_COMPLETE`` is written last so readers can trust it."""
        dest = self.path(*key)
        local_dir = Path(local_dir)
        for f in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            if f.name == COMPLETE_MARKER:
                continue
            self.write_bytes_atomic(posixpath.join(dest, f.relative_to(local_dir).as_posix()), f.read_bytes())
        self.write_bytes_atomic(posixpath.join(dest, COMPLETE_MARKER), b"ok\n")
        return self._show(dest)

    def dir_complete(self, *key: str) -> bool:
        return self.exists(posixpath.join(self.path(*key), COMPLETE_MARKER))

    def get_dir(self, local_dir: str | Path, *key: str) -> Path:
        """Download a complete folder to ``local_dir`` (refuses incomplete ones)."""
        src = self.path(*key)
        if not self.dir_complete(*key):
            raise StorageError(f"{self._show(src)} is missing or incomplete (no {COMPLETE_MARKER})")
        local_dir = Path(local_dir)
        for entry in self.fs.find(src):
            rel = posixpath.relpath(entry, src)
            target = local_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(entry))
        return local_dir

    def delete(self, *key: str) -> None:
        p = self.path(*key)
        if self.exists(p):
            self.fs.rm(p, recursive=True)

