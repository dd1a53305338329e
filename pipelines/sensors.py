"""The new-dataset sensor: dropped files and new registry entries start ingestion.

Two sources of new data:

* a file dropped under ``<storage root>/incoming/<dataset>/`` (local or S3).
  If ``<dataset>`` has no registry entry, one is added with
  ``source: incoming`` so ingestion knows where to read;
* a registry entry (``prmforge add-dataset`` or an edit of ``datasets.yaml``)
  whose key is not yet a partition.

Either adds the dynamic partition (``datasets``) and requests an ingestion
run for it; the automation conditions carry the new partition through
rollouts, labelling and retraining.

Cursor safety
-------------
The cursor maps every incoming file already requested to its fingerprint
(size + modification time or ETag). Dagster stores a new cursor only
together with the tick's run requests, so:

* a file is never requested twice: once a tick succeeds its fingerprint is
  in the cursor; run keys are derived from the fingerprints, so even a tick
  re-evaluated after a crash between "runs submitted" and "cursor stored"
  is deduplicated by Dagster;
* a file is never missed: a failed tick (storage unreachable, bad registry)
  raises before returning, the cursor is not advanced, and the next tick
  sees the same files again. Files still being written (younger than
  ``PRMFORGE_INCOMING_SETTLE_S`` seconds, default 2) and temporary files
  (``.tmp-*``, dot files) are left for a later tick, not recorded.
* a file rewritten in place (new fingerprint) is new data and is requested
  again.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import dataclass

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.partitions import DATASETS_PARTITIONS_NAME, dataset_partitions
from pipelines.jobs import seed_job
from prmforge.env import incoming_settle_s
from prmforge.names import InvalidNameError, validate_name
from prmforge.registry import RegistryError
from prmforge.storage import Storage
from resources.storage import StorageResource

INCOMING = "incoming"
CURSOR_VERSION = 1


@dataclass(frozen=True)
class IncomingFile:
    dataset: str
    path: str  # relative to incoming/
    fingerprint: str
    mtime: float | None


def settle_seconds() -> float:
    """Minimum age of a dropped file before it is picked up."""
    return incoming_settle_s()


def _mtime(info: dict) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _fingerprint(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag")
    parts = [str(info.get("size")), str(etag or _mtime(info))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def scan_incoming(storage: Storage) -> tuple[list[IncomingFile], list[str]]:
    """Every file under ``incoming/<dataset>/``, and the problems found.

    Problems (a folder name that is not a valid dataset key, a file directly
    under ``incoming/``) are returned, not raised: they are logged on every
    tick so the user sees them, and they never block other datasets.
    """
    base = storage.path(INCOMING)
    if not storage.exists(base):
        return [], []
    files: list[IncomingFile] = []
    problems: list[str] = []
    for entry in storage.fs.ls(base, detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if name.startswith("."):
            continue
        if entry.get("type") != "directory":
            problems.append(f"incoming/{name}: files must go in a dataset folder, incoming/<dataset>/{name}")
            continue
        try:
            dataset = validate_name(name, "incoming dataset folder")
        except InvalidNameError as exc:
            problems.append(f"incoming/{name}: {exc}")
            continue
        for path, info in sorted(storage.fs.find(entry["name"], detail=True).items()):
            rel = posixpath.relpath(path, base)
            if any(part.startswith(".") for part in rel.split("/")):
                continue  # temporary or hidden file: a writer is still at work
            files.append(IncomingFile(dataset, rel, _fingerprint(info), _mtime(info)))
    return files, problems


def _load_cursor(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    if not isinstance(doc, dict) or doc.get("v") != CURSOR_VERSION or not isinstance(doc.get("files"), dict):
        return {}
    return {str(k): str(v) for k, v in doc["files"].items()}


def _dump_cursor(files: dict[str, str]) -> str:
    return json.dumps({"v": CURSOR_VERSION, "files": dict(sorted(files.items()))}, separators=(",", ":"))


def _run_key(dataset: str, files: list[IncomingFile]) -> str:
    digest = hashlib.sha256("\n".join(f"{f.path}:{f.fingerprint}" for f in sorted(files, key=lambda f: f.path))
                            .encode()).hexdigest()[:16]
    return f"incoming-{dataset}-{digest}"


def _ensure_registry_entry(dataset: str, store: Storage) -> str | None:
    """Register ``dataset`` with ``source: incoming`` if it has no entry.

    The entry is made from the folder's ``_dataset.yaml`` when there is one
    (so the user's split is kept) and re-made when that manifest changes.
    Returns a note for the log when an entry was added or updated; an entry
    the user wrote with another source is left as it is.
    """
    from prmforge.ingest.core import read_manifest
    from prmforge.registry import add_dataset, incoming_spec, load_registry

    spec = incoming_spec(dataset, read_manifest(store, dataset))
    current = load_registry().get(dataset)
    if current is not None and (current.source != "incoming" or current == spec):
        return None
    add_dataset(dataset, "incoming", format=spec.format, adapter=spec.adapter, split=spec.split,
                columns=spec.columns, options=spec.options, description=spec.description, overwrite=True)
    return f"registered {dataset!r} with source 'incoming', split {spec.split!r}"


@sensor(
    name="new_dataset_sensor",
    job=seed_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="New files under <storage root>/incoming/<dataset>/ or new registry entries: add the "
    "dataset partition and ingest it.",
)
def new_dataset_sensor(context: SensorEvaluationContext, storage: StorageResource):
    """See the module docstring for the cursor's guarantees."""
    from prmforge.registry import load_registry

    seen = _load_cursor(context.cursor)
    store = storage.get()
    files, problems = scan_incoming(store)  # raises if storage is unreachable: cursor stays put
    for problem in problems:
        context.log.warning(problem)

    now = time.time()
    settle = settle_seconds()
    new_by_dataset: dict[str, list[IncomingFile]] = {}
    waiting = 0
    for f in files:
        if seen.get(f.path) == f.fingerprint:
            continue
        if f.mtime is not None and now - f.mtime < settle:
            waiting += 1
            continue
        new_by_dataset.setdefault(f.dataset, []).append(f)

    for dataset in sorted(new_by_dataset):
        try:
            note = _ensure_registry_entry(dataset, store)
        except RegistryError as exc:  # a bad manifest holds back its dataset only, until it is fixed
            context.log.warning(str(exc))
            new_by_dataset.pop(dataset)
            continue
        if note:
            context.log.info(note)

    registry = load_registry()
    known = set(context.instance.get_dynamic_partitions(DATASETS_PARTITIONS_NAME))
    new_partitions = sorted((set(registry) | set(new_by_dataset)) - known)

    run_requests: list[RunRequest] = []
    for dataset in sorted(set(new_by_dataset) | set(new_partitions)):
        dropped = new_by_dataset.get(dataset, [])
        if dropped:
            key = _run_key(dataset, dropped)
            trigger = "incoming"
        else:
            key = f"registry-{dataset}"
            trigger = "registry"
        run_requests.append(
            RunRequest(
                run_key=key,
                partition_key=dataset,
                tags={"prmforge/trigger": trigger, "prmforge/dataset": dataset,
                      "prmforge/files": str(len(dropped))},
            )
        )

    updated = dict(seen)
    for dropped in new_by_dataset.values():
        for f in dropped:
            updated[f.path] = f.fingerprint
    present = {f.path for f in files}
    # Forget files that were removed, so the cursor does not grow forever; a
    # file dropped again under the same name is then new data.
    updated = {p: fp for p, fp in updated.items() if p in present}

    if not run_requests:
        context.update_cursor(_dump_cursor(updated))
        reason = "no new files or registry entries"
        if waiting:
            reason += f"; {waiting} file(s) still settling"
        return SkipReason(reason)

    context.log.info(
        f"requesting ingestion of {[r.partition_key for r in run_requests]}; new partitions: {new_partitions}"
    )
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[dataset_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=_dump_cursor(updated),
    )


# Evaluates the automation conditions of pipelines/automation.py. Dagster's
# implicit default sensor starts STOPPED; this one runs as soon as the daemon
# does, so a dropped file flows to a retrained PRM with no click in the UI.
# Requests that span partitioned and unpartitioned assets become a backfill,
# which executes them in dependency order.
automation_sensor = AutomationConditionSensorDefinition(
    "prmforge_automation",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    emit_backfills=True,
    description="Runs the stages whose automation conditions (pipelines/automation.py) are true.",
)

SENSORS = [new_dataset_sensor, automation_sensor]
