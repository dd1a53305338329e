"""Checks a command runs before it starts any work on a list of datasets.

Why: a typo in a dataset key or a source path that does not exist used to be
found minutes later, inside a run, after retries. These checks take well
under a second, touch nothing, and raise :class:`~prmforge.errors.ConfigError`
with one line naming what to fix, so the CLI can exit with code 2 at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prmforge.errors import ConfigError
from prmforge.ingest.core import read_manifest
from prmforge.ingest.readers import SourceError, SourceNotFoundError, filesystem_for, list_files
from prmforge.names import validate_name
from prmforge.registry import bundled_path, incoming_spec, load_registry


def check_datasets(keys: Sequence[str], storage: Any) -> None:
    """Every key names a dataset whose source can be found; one ConfigError naming every problem otherwise."""
    registry = load_registry()
    problems = []
    for key in keys:
        try:
            _check(key, registry, storage)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("; ".join(problems))


def _check(key: str, registry: dict, storage: Any) -> None:
    validate_name(key, "dataset key")
    spec = registry.get(key)
    if spec is None:
        if storage.exists(storage.path("incoming", key)):
            incoming_spec(key, read_manifest(storage, key))  # a bad manifest is a ConfigError
            return
        raise ConfigError(f"dataset {key!r} is not registered and has no files under incoming/{key}/ "
                          f"(known: {', '.join(sorted(registry)) or 'none'}); add it with "
                          "`prmforge add-dataset` or drop files there")
    what = f"dataset {key!r} (source {spec.source!r})"
    if spec.kind == "bundled" and not bundled_path(spec).exists():
        raise ConfigError(f"{what}: no such bundled file")
    if spec.kind == "incoming" and not storage.exists(storage.path("incoming", key)):
        raise ConfigError(f"{what}: no files under incoming/{key}/ yet")
    if spec.kind == "path":
        fs, path = filesystem_for(spec.source)
        try:
            list_files(fs, path, what)  # SourceNotFoundError (a ConfigError) when absent
        except SourceNotFoundError:
            raise
        except SourceError:
            pass  # unreachable for now (I/O): the run retries it, this is no configuration mistake
