"""The dataset registry: dataset key → where its seed problems come from.

The registry is the shipped, read-only ``datasets.yaml`` at the repository
root overlaid by the data home's own ``<PRMFORGE_HOME>/datasets.yaml``, where
``add-dataset`` and the new-dataset sensor write; ``PRMFORGE_REGISTRY`` names
one file to use instead of both. Files dropped under ``incoming/<key>/`` may
carry a ``_dataset.yaml`` manifest (split, format, adapter, columns, options,
description) that their registry entry is made from::

    datasets:
      gsm8k-sample:
        source: bundled:gsm8k_sample.jsonl   # see SOURCE FORMS below
        format: auto          # auto | jsonl | json | parquet | csv
        adapter: gsm8k        # auto | gsm8k | math | generic | world
        split: train          # default split of every row
        columns: {}           # generic mapping: problem, answer, split, id (and solution for math)
        options: {}           # json_field, delimiter, config, hub_split, data_files, size, seed, difficulty
        description: ...

Source forms: ``world`` (the built-in generator), ``incoming`` (files dropped
under ``<storage root>/incoming/<key>/``), ``bundled:<file>`` (a file shipped
in ``prmforge/data``), ``hub:<id>`` (a dataset-hub id, read offline from the
``datasets`` cache), or a local path / ``file://`` / ``s3://`` URL of a file,
folder, prefix or glob. Keys are partition keys and storage path components,
so they pass :func:`prmforge.names.validate_name`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, Field, field_validator

from prmforge.env import home, registry_path
from prmforge.errors import ConfigError
from prmforge.names import validate_name

REPO_REGISTRY = Path(__file__).resolve().parents[1] / "datasets.yaml"
BUNDLED_DIR = Path(__file__).resolve().parent / "data"
SOURCE_KINDS = ("world", "incoming", "bundled", "hub", "path")

_HEADER = """\
# prmforge dataset registry: dataset key -> source, format, adapter, split, column mapping, options.
# Each key is a partition of seed_problems. Add entries with `prmforge add-dataset` or by hand;
# the format is documented in docs/ingestion.md and prmforge/registry.py.
"""


class RegistryError(ConfigError):
    """A registry file or entry that cannot be used; the message says which and why."""


class UnknownDatasetError(ConfigError, KeyError):
    """A dataset key that is in no registry (a ``KeyError`` too, for lookups)."""

    def __str__(self) -> str:
        return str(self.args[0])


class DatasetSpec(BaseModel):
    """One registry entry."""

    key: str
    source: str
    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    adapter: Literal["auto", "gsm8k", "math", "generic", "world"] = "auto"
    split: str = "train"
    columns: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        return validate_name(v, "dataset key")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("source must not be empty")
        kind = source_kind(v)
        if kind == "path":
            scheme = urlparse(v).scheme
            if scheme not in ("", "file", "s3", "s3a") and len(scheme) != 1:
                raise ValueError(f"unsupported source {v!r}: use world, incoming, bundled:, hub:, a path, file:// or s3://")
        if kind == "bundled":
            name = v.split(":", 1)[1]
            if not name or "/" in name or "\\" in name or ".." in name:
                raise ValueError(f"bundled source {v!r} must name one file in prmforge/data")
        if kind == "hub" and not v.split(":", 1)[1].strip():
            raise ValueError("hub source needs an id: hub:<owner>/<name>")
        return v

    @field_validator("split")
    @classmethod
    def _split(cls, v: str) -> str:
        from prmforge.ingest.settings import ALLOWED_SPLITS, SPLIT_ALIASES

        s = SPLIT_ALIASES.get(v.strip().lower(), v.strip().lower())
        if s not in ALLOWED_SPLITS:
            raise ValueError(f"split {v!r} not in {list(ALLOWED_SPLITS)}")
        return s

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = {"problem", "answer", "split", "id", "solution"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown column roles {bad}; allowed: {sorted(allowed)}")
        return v

    @property
    def kind(self) -> str:
        return source_kind(self.source)

    def to_yaml_dict(self) -> dict[str, Any]:
        out = self.model_dump(exclude={"key"})
        return {k: v for k, v in out.items() if v not in ({}, "", None)}


def source_kind(source: str) -> str:
    """``world``, ``incoming``, ``bundled``, ``hub`` or ``path``."""
    if source in ("world", "incoming"):
        return source
    if source.startswith("bundled:"):
        return "bundled"
    if source.startswith("hub:"):
        return "hub"
    return "path"


def bundled_path(spec: DatasetSpec) -> Path:
    return BUNDLED_DIR / spec.source.split(":", 1)[1]


def default_registry_path() -> Path:
    """The file new entries go to: ``PRMFORGE_REGISTRY`` or ``<PRMFORGE_HOME>/datasets.yaml``.

    Never the checkout's ``datasets.yaml``: a read-only or container checkout
    must keep working, and two data homes must not see each other's datasets.
    """
    return registry_path() or home() / "datasets.yaml"


def builtin_entries() -> dict[str, DatasetSpec]:
    """The entries a fresh checkout ships with; used when no registry file exists."""
    return {
        "world-demo": DatasetSpec(key="world-demo", source="world", adapter="world", split="train",
                                  description="built-in world generator; size from the profile (ingest.world_size)"),
        "gsm8k-sample": DatasetSpec(key="gsm8k-sample", source="bundled:gsm8k_sample.jsonl", format="jsonl",
                                    adapter="gsm8k", split="train",
                                    description="20 hand-written GSM8K-format problems bundled with prmforge"),
    }


def load_registry(path: str | Path | None = None) -> dict[str, DatasetSpec]:
    """All entries the pipeline knows.

    With ``path`` (or ``PRMFORGE_REGISTRY``): that file's entries (the built-in
    ones if it does not exist). Otherwise the shipped ``datasets.yaml``
    overlaid by the data home's registry, whose entries win.
    """
    if path or registry_path():
        return _read_registry_file(Path(path) if path else default_registry_path(), builtin_entries())
    shipped = _read_registry_file(REPO_REGISTRY, builtin_entries())
    return shipped | _read_registry_file(default_registry_path(), {})


def _read_registry_file(p: Path, missing: dict[str, DatasetSpec]) -> dict[str, DatasetSpec]:
    """Entries of one registry file; ``missing`` if it does not exist."""
    if not p.exists():
        return dict(missing)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RegistryError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets", {}), dict):
        raise RegistryError(f"{p}: expected a top-level 'datasets:' mapping")
    out: dict[str, DatasetSpec] = {}
    for key, entry in (doc.get("datasets") or {}).items():
        if not isinstance(entry, dict):
            raise RegistryError(f"{p}: entry {key!r} must be a mapping")
        try:
            out[str(key)] = DatasetSpec(key=str(key), **entry)
        except ValueError as exc:
            raise RegistryError(f"{p}: entry {key!r}: {exc}") from exc
    return out


def list_datasets(path: str | Path | None = None) -> list[DatasetSpec]:
    return [spec for _, spec in sorted(load_registry(path).items())]


def get_dataset(key: str, path: str | Path | None = None) -> DatasetSpec:
    """The entry for ``key``; :class:`UnknownDatasetError` (a ``KeyError``) naming the registry if absent."""
    validate_name(key, "dataset key")
    reg = load_registry(path)
    if key not in reg:
        p = path or registry_path() or f"{REPO_REGISTRY.name} + {default_registry_path()}"
        raise UnknownDatasetError(f"dataset {key!r} is not in the registry {p} (known: {sorted(reg)})")
    return reg[key]


def save_registry(specs: dict[str, DatasetSpec], path: str | Path | None = None) -> Path:
    """Write the registry atomically (temp file + rename), keys sorted."""
    p = Path(path) if path else default_registry_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"datasets": {k: specs[k].to_yaml_dict() for k in sorted(specs)}}
    text = _HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def add_dataset(
    key: str,
    source: str,
    *,
    format: str = "auto",  # noqa: A002 - mirrors the YAML field
    adapter: str = "auto",
    split: str = "train",
    columns: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
    description: str = "",
    path: str | Path | None = None,
    overwrite: bool = False,
) -> DatasetSpec:
    """Validate and add (or, with ``overwrite``, replace) one entry; returns it.

    Raises :class:`RegistryError` for an invalid entry or an existing key, so a
    CLI can print the message as is. The caller registers the Dagster
    partition (``instance.add_dynamic_partitions("datasets", [key])``).
    """
    try:
        spec = DatasetSpec(key=key, source=source, format=format, adapter=adapter, split=split,
                           columns=columns or {}, options=options or {}, description=description)
    except ValueError as exc:
        raise RegistryError(f"invalid dataset entry {key!r}: {exc}") from exc
    known = load_registry(path)
    if key in known and not overwrite and known[key] != spec:
        raise RegistryError(f"dataset {key!r} is already registered (source {known[key].source!r}); pass overwrite")
    target = Path(path) if path else default_registry_path()
    own = _read_registry_file(target, builtin_entries() if (path or registry_path()) else {})
    own[key] = spec
    save_registry(own, target)
    return spec


MANIFEST = "_dataset.yaml"
MANIFEST_FIELDS = ("format", "adapter", "split", "columns", "options", "description")


def incoming_spec(key: str, manifest_text: str | None) -> DatasetSpec:
    """The registry entry for files dropped under ``incoming/<key>/``.

    ``manifest_text`` is the folder's ``_dataset.yaml`` (None when there is
    none: every row is ``train``, the format and adapter are detected). A
    manifest that is not valid raises :class:`RegistryError` naming the field,
    so the user's split is never silently replaced by a default.
    """
    fields: dict[str, Any] = {"description": "files dropped under incoming/"}
    if manifest_text is not None:
        where = f"incoming/{key}/{MANIFEST}"
        try:
            doc = yaml.safe_load(manifest_text) or {}
        except yaml.YAMLError as exc:
            raise RegistryError(f"{where}: not valid YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise RegistryError(f"{where}: expected a mapping of {list(MANIFEST_FIELDS)}")
        unknown = sorted(set(doc) - set(MANIFEST_FIELDS))
        if unknown:
            raise RegistryError(f"{where}: unknown fields {unknown}; allowed: {list(MANIFEST_FIELDS)}")
        fields.update(doc)
    try:
        return DatasetSpec(key=key, source="incoming", **fields)
    except ValueError as exc:
        raise RegistryError(f"incoming/{key}/{MANIFEST}: {exc}") from exc
