"""Readers: a source (files, a hub id, the world generator) → a stream of raw records.

A reader never raises for bad *content*: a line that is not JSON, a CSV row
with the wrong number of fields, undecodable bytes, an empty or unreadable
file, or a Parquet file without the needed columns all become a
:class:`RawRecord` carrying a quarantine ``error``. Only an unreachable
*source* (no such path, hub id not cached) raises :class:`SourceError`,
because then there is nothing to quarantine and the run must say why.

Each record has a ``source_row``: its 0-based position in the whole source
(files are read in sorted order and numbered continuously), plus the file
and the position inside that file for the quarantine table and meta.
A file-level failure is one record (it is counted once in "rows read").
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import fsspec
import pyarrow.parquet as pq

from prmforge.env import force_hub_offline, s3_options_from_env
from prmforge.errors import ConfigError

FORMATS = ("jsonl", "json", "parquet", "csv")
_EXT = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}
FILE_ROW = -1  # file_row of a record that stands for a whole file


class SourceError(RuntimeError):
    """The source itself cannot be reached; the message names the dataset and source."""


class SourceNotFoundError(SourceError, ConfigError):
    """The source does not exist or cannot be read as configured: retrying cannot help."""


@dataclass
class RawRecord:
    """One record as read, or the reason it could not be read."""

    record: Any = None
    error: tuple[str, str] | None = None  # (quarantine reason, detail)
    raw: str | None = None
    file: str | None = None
    file_row: int = 0


# Returns None if the columns can feed the adapter, else a detail string.
ColumnCheck = Callable[[list[str]], str | None]


def has_surrogates(text: str) -> bool:
    """True if ``text`` holds surrogates: bytes that were not UTF-8 (surrogateescape) or a lone ``\\udXXX`` escape."""
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def shown(text: str, limit: int) -> str:
    """``text`` made storable (invalid bytes as U+FFFD) and cut to ``limit`` characters."""
    safe = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace") if has_surrogates(text) else text
    return safe if len(safe) <= limit else safe[:limit] + f"...[{len(safe) - limit} more chars]"


def filesystem_for(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without scheme) for a local path, ``file://`` or ``s3://`` URL."""
    parsed = urlparse(url)
    if parsed.scheme in ("s3", "s3a"):
        return fsspec.filesystem("s3", skip_instance_cache=True, **s3_options_from_env()), parsed.netloc + parsed.path
    if parsed.scheme == "file":
        return fsspec.filesystem("file"), parsed.path
    if parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # plain or Windows path
        return fsspec.filesystem("file"), os.path.abspath(url)
    raise SourceNotFoundError(f"unsupported source URL {url!r}: use a local path, file:// or s3://")


def list_files(fs: fsspec.AbstractFileSystem, path: str, what: str) -> list[str]:
    """Files under ``path`` (itself if a file; sorted; hidden and ``_``-prefixed names skipped)."""
    try:
        if any(c in path for c in "*?["):
            found = fs.glob(path)
        elif fs.isdir(path):
            found = fs.find(path)
        elif fs.exists(path):
            return [path]
        else:
            raise SourceNotFoundError(f"{what}: {path!r} does not exist")
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{what}: cannot list {path!r}: {type(exc).__name__}: {exc}") from exc
    files = [f for f in found if not posixpath.basename(f).startswith((".", "_"))]
    return sorted(f for f in files if not fs.isdir(f))


def format_of(path: str, declared: str) -> str | None:
    if declared != "auto":
        return declared
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return _EXT.get(os.path.splitext(name)[1])


def read_file(
    fs: fsspec.AbstractFileSystem,
    path: str,
    fmt: str,
    options: dict[str, Any],
    check_columns: ColumnCheck | None,
    raw_limit: int,
) -> Iterator[RawRecord]:
    """Records of one file; bad content becomes records with an ``error``."""
    name = path
    if fmt not in FORMATS:
        yield RawRecord(error=("malformed_file", f"unknown format for {name!r}; set 'format'"), file=name,
                        file_row=FILE_ROW)
        return
    try:
        with fs.open(path, "rb", compression="infer") as fh:
            data = fh.read()
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a quarantine row
        yield RawRecord(error=("malformed_file", f"cannot read: {type(exc).__name__}: {exc}"), file=name,
                        file_row=FILE_ROW)
        return
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark (Excel, Notepad)
        data = data[3:]
    if not data.strip():
        yield RawRecord(error=("empty_file", f"{len(data)} bytes, no records"), file=name, file_row=FILE_ROW)
        return
    reader = {"jsonl": _jsonl, "json": _json, "parquet": _parquet, "csv": _csv}[fmt]
    count = 0
    for rec in reader(data, options, check_columns, raw_limit):
        rec.file = name
        count += 1
        yield rec
    if count == 0:
        yield RawRecord(error=("empty_file", "file holds no records"), file=name, file_row=FILE_ROW)


def _jsonl(data: bytes, options: dict, check: ColumnCheck | None, limit: int) -> Iterator[RawRecord]:
    row = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue  # blank lines separate nothing and hold nothing
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawRecord(error=("invalid_utf8", str(exc)), raw=shown(line.decode("utf-8", "replace"), limit),
                            file_row=row)
            row += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RawRecord(error=("malformed_record", f"not JSON: {exc}"), raw=shown(text, limit), file_row=row)
            row += 1
            continue
        yield RawRecord(record=obj, raw=None, file_row=row)
        row += 1


def _records_in(obj: Any, field: str | None) -> list[Any] | None:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        if field is not None:
            val = obj.get(field)
            return val if isinstance(val, list) else None
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    return None


def _json(data: bytes, options: dict, check: ColumnCheck | None, limit: int) -> Iterator[RawRecord]:
    text = data.decode("utf-8", "surrogateescape")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        yield RawRecord(error=("malformed_file", f"not JSON: {exc}"), raw=shown(text, limit), file_row=FILE_ROW)
        return
    records = _records_in(obj, options.get("json_field"))
    if records is None:
        keys = sorted(obj)[:12] if isinstance(obj, dict) else type(obj).__name__
        yield RawRecord(error=("malformed_file", f"no list of records (set options.json_field); top level: {keys}"),
                        file_row=FILE_ROW)
        return
    for i, rec in enumerate(records):
        if isinstance(rec, dict) and any(isinstance(v, str) and has_surrogates(v) for v in rec.values()):
            yield RawRecord(error=("invalid_utf8", "a value holds bytes that are not UTF-8"),
                            raw=shown(json.dumps(rec, ensure_ascii=False), limit), file_row=i)
            continue
        yield RawRecord(record=rec, file_row=i)


def _parquet(data: bytes, options: dict, check: ColumnCheck | None, limit: int) -> Iterator[RawRecord]:
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        columns = pf.schema_arrow.names
    except Exception as exc:  # noqa: BLE001 - corrupt file: one quarantine row
        yield RawRecord(error=("malformed_file", f"not Parquet: {type(exc).__name__}: {exc}"), file_row=FILE_ROW)
        return
    problem = check(columns) if check else None
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                if problem:
                    yield RawRecord(error=("wrong_schema", problem),
                                    raw=shown(json.dumps(rec, default=str, ensure_ascii=False), limit), file_row=row)
                else:
                    yield RawRecord(record=rec, file_row=row)
                row += 1
    except Exception as exc:  # noqa: BLE001 - rest of the file unreadable
        yield RawRecord(error=("malformed_file", f"unreadable after row {row}: {type(exc).__name__}: {exc}"),
                        file_row=FILE_ROW)


def _csv(data: bytes, options: dict, check: ColumnCheck | None, limit: int) -> Iterator[RawRecord]:
    text = data.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    csv.field_size_limit(1 << 30)  # oversized fields reach the size check, not a parser error
    delimiter = options.get("delimiter", ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return
    problem = check(header) if check else None
    row = 0
    try:
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            raw = shown(delimiter.join(fields), limit)
            if any(has_surrogates(f) for f in fields):
                yield RawRecord(error=("invalid_utf8", "a field holds bytes that are not UTF-8"), raw=raw, file_row=row)
            elif len(fields) != len(header):
                yield RawRecord(error=("malformed_record", f"{len(fields)} fields, header has {len(header)}"), raw=raw,
                                file_row=row)
            elif problem:
                yield RawRecord(error=("wrong_schema", problem), raw=raw, file_row=row)
            else:
                yield RawRecord(record=dict(zip(header, fields, strict=True)), file_row=row)
            row += 1
    except csv.Error as exc:
        yield RawRecord(error=("malformed_record", f"CSV parse error after row {row}: {exc}"), file_row=row)


def read_files(
    url: str,
    fmt: str,
    options: dict[str, Any],
    check_columns: ColumnCheck | None,
    raw_limit: int,
    what: str,
) -> Iterator[RawRecord]:
    """Records of every file at ``url`` (a file, a folder/prefix or a glob)."""
    fs, path = filesystem_for(url)
    files = list_files(fs, path, what)
    if not files:
        raise SourceNotFoundError(f"{what}: no files under {url!r}")
    globbed = [i for i, c in enumerate(path) if c in "*?["]
    base = posixpath.dirname(path[: globbed[0]]) if globbed else path.rstrip("/")
    for f in files:
        # Meta and quarantine name the file relative to the source, so ids and
        # meta do not depend on where a checkout or bucket lives.
        rel = posixpath.relpath(f, base) if f != base else posixpath.basename(f)
        for rec in read_file(fs, f, format_of(f, fmt) or "unknown", options, check_columns, raw_limit):
            rec.file = rel
            yield rec


def read_hub(hub_id: str, options: dict[str, Any], split: str, what: str) -> Iterator[RawRecord]:
    """Rows of a dataset-hub dataset, offline from the local ``datasets`` cache only.

    Offline mode is forced (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``) before
    ``datasets`` is imported and on its config if it already was, so a
    missing dataset fails at once with a message naming it instead of
    waiting on the network.
    """
    force_hub_offline()
    try:
        import datasets
        import datasets.config as dconfig
    except ImportError as exc:
        raise SourceError(f"{what}: the 'datasets' package is needed for hub id {hub_id!r}") from exc
    dconfig.HF_HUB_OFFLINE = True
    if hasattr(dconfig, "HF_DATASETS_OFFLINE"):
        dconfig.HF_DATASETS_OFFLINE = True
    try:
        import huggingface_hub.constants as hconst

        hconst.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    kwargs = {k: v for k, v in options.items() if k in ("data_files", "data_dir", "revision", "cache_dir")}
    try:
        ds = datasets.load_dataset(hub_id, name=options.get("config"), split=options.get("hub_split", split),
                                   **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available offline"
        raise SourceNotFoundError(
            f"{what}: dataset hub id {hub_id!r} could not be loaded offline from the local cache "
            f"({type(exc).__name__}: {str(exc)[:300]}). Download it on a connected machine into the "
            f"'datasets' cache (HF_HOME) or export it to JSONL/Parquet and register the file instead."
        ) from exc
    for i, rec in enumerate(ds):
        yield RawRecord(record=dict(rec), file=f"hub:{hub_id}", file_row=i)


def read_world(n: int, seed: int, difficulty: str, what: str) -> Iterator[RawRecord]:
    """Problems of the built-in world generator (``prmforge.world``)."""
    try:
        from prmforge.world import generate_problems
    except ImportError as exc:
        raise SourceError(f"{what}: the built-in world generator (prmforge.world) is not available: {exc}") from exc
    for i, p in enumerate(generate_problems(n, seed=seed, difficulty=difficulty)):
        # ``meta`` is the world's own (``prmforge.world.meta_json``): later stages rebuild
        # the problem and run the step oracle from it.
        yield RawRecord(record={"problem": p.problem, "answer": p.answer, "meta": dict(p.meta)}, file_row=i)
