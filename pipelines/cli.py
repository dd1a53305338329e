"""The ``prmforge`` command: run the pipeline, add datasets, open the UI, backfill.

Every command uses one persistent Dagster instance, ``DAGSTER_HOME``
(default ``<PRMFORGE_HOME>/dagster_home``, created with a ``dagster.yaml``
on first use), so runs started here appear in ``prmforge ui`` and the
other way round.

It lives with the code location (it loads ``pipelines.definitions`` and
drives Dagster), not in ``prmforge/``, which imports no orchestration.
Dagster is imported only inside functions, so ``prmforge --help`` and
``add-dataset`` stay fast.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prmforge import env
from prmforge.env import home

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE_CHOICES = ("tiny", "real", "demo", "world")

DAGSTER_YAML = """\
# Dagster instance of prmforge's local runs (written once by the prmforge CLI; edit freely).
# Runs, event logs and schedules live in SQLite files next to this file.
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  pools:
    # GPU steps (policy_rollouts, mc_step_labels, judge_step_labels, prm_model) share the pool "gpu".
    # One GPU: one such step at a time. More GPUs: `dagster instance concurrency set gpu N`
    # or PRMFORGE_GPU_POOL_LIMIT=N for prmforge commands.
    default_limit: 1
    granularity: op
  runs:
    max_concurrent_runs: 4
# A run whose process dies (kill -9, OOM) must not keep its gpu slot forever.
# Runs launched from the UI: their code server marks the run failed when its
# worker dies, and the daemon's monitoring frees a finished run's slots after
# free_slots_after_run_end_seconds (the delay lets step processes of a dead run
# worker finish or die first). Runs of `prmforge run`/`backfill` execute in the
# prmforge process; the next prmforge command marks them failed and frees
# their slots (pipelines.cli.reap_dead_runs).
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 30
"""

# Run tag naming the process that executes an in-process CLI run: "<host>:<pid>:<start ticks>".
RUN_PROCESS_TAG = "prmforge/process"


# ---- instance -----------------------------------------------------------------


def dagster_home() -> Path:
    """``DAGSTER_HOME`` or ``<PRMFORGE_HOME>/dagster_home``, with a ``dagster.yaml``.

    The variable is exported so Dagster (and ``dagster dev`` started by
    ``prmforge ui``) use the same directory.
    """
    path = env.dagster_home(home() / "dagster_home").resolve()
    path.mkdir(parents=True, exist_ok=True)
    cfg = path / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(DAGSTER_YAML, encoding="utf-8")
    env.set_dagster_home(path)
    return path


def get_instance():
    """The persistent instance in :func:`dagster_home`, after :func:`reap_dead_runs`."""
    from dagster import DagsterInstance

    dagster_home()
    instance = DagsterInstance.get()
    if env.gpu_pool_limit_set():
        from pipelines.automation import GPU_POOL

        instance.event_log_storage.set_concurrency_slots(GPU_POOL, env.gpu_pool_limit())
    reap_dead_runs(instance)
    return instance


# ---- runs whose process died ----------------------------------------------------


def _start_ticks(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None.

    Why: a pid alone can be reused by an unrelated process after a crash; pid
    plus start time names one process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name, in parentheses, may hold spaces
    return fields[19] if len(fields) > 19 else None


def process_token(pid: int | None = None) -> str:
    """``<host>:<pid>:<start ticks>`` of ``pid`` (default: this process), stored on CLI runs."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid) or ''}"


def process_gone(token: str) -> bool | None:
    """True if the process named by ``token`` no longer exists, False if it does,
    None if this machine cannot tell (it ran on another host)."""
    parts = token.split(":")
    if len(parts) != 3:
        return None
    host, pid_text, ticks = parts
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, as another user's process
    now = _start_ticks(pid)
    return bool(ticks and now is not None and now != ticks)  # same pid, another process


def reap_dead_runs(instance) -> list[str]:
    """Mark in-process CLI runs whose process died as failed and free their concurrency slots.

    Why: ``prmforge run``/``backfill`` execute runs inside the prmforge process.
    If that process is killed (kill -9, OOM, a closed laptop lid that ends the
    session), nothing reports the run's end: it stays STARTED in the UI and
    keeps its ``gpu`` pool slot, so every later GPU step waits forever. Every
    prmforge command calls this first. Only runs that carry
    :data:`RUN_PROCESS_TAG` for this host and whose process is gone are
    touched; their steps ran in that process (the in-process executor), so
    none can still be using the GPU. Returns the run ids reaped.
    """
    from dagster import DagsterRunStatus, RunsFilter

    reaped: list[str] = []
    runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                                                           DagsterRunStatus.CANCELING]))
    for run in runs:
        token = run.tags.get(RUN_PROCESS_TAG)
        if not token or not process_gone(token):
            continue
        pid = token.split(":")[1]
        instance.report_run_failed(run, f"the prmforge process that executed this run (pid {pid}) is gone "
                                        "(killed?); marked failed by a later prmforge command")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        _say(f"run {run.run_id}: its prmforge process (pid {pid}) died; marked failed, concurrency slots freed")
        reaped.append(run.run_id)
    return reaped


def _apply_profile(profile: str | None) -> None:
    if profile:
        env.set_profile(profile)


def _load_defs():
    """The code location (imported after the profile is set: resources read it)."""
    from pipelines.definitions import build_defs

    return build_defs()


def register_partitions(instance, keys: Sequence[str] | None = None) -> list[str]:
    """Add registry datasets (or ``keys``) as ``datasets`` partitions; returns those added."""
    from assets.partitions import DATASETS_PARTITIONS_NAME
    from prmforge.names import validate_name
    from prmforge.registry import load_registry

    wanted = list(keys) if keys is not None else sorted(load_registry())
    for key in wanted:
        validate_name(key, "dataset key")
    existing = set(instance.get_dynamic_partitions(DATASETS_PARTITIONS_NAME))
    new = [k for k in wanted if k not in existing]
    if new:
        instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, new)
    return new


# ---- progress -----------------------------------------------------------------


def _say(msg: str) -> None:
    print(msg, flush=True)


class ProgressPrinter:
    """Prints step starts, successes, retries, failures and checks of a run as they happen.

    It polls the instance's event log for the run (the run itself executes in
    this process); polling keeps it independent of the executor and storage.
    """

    KINDS = ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "STEP_UP_FOR_RETRY", "ASSET_CHECK_EVALUATION")

    def __init__(self, instance, run_id: str, interval: float = 0.5) -> None:
        self.instance = instance
        self.run_id = run_id
        self.interval = interval
        self.seen = 0
        self.started: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ProgressPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()  # whatever arrived after the last poll

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # progress output must never break a run
                pass

    def poll(self) -> None:
        logs = self.instance.all_logs(self.run_id)
        for entry in logs[self.seen:]:
            self._show(entry)
        self.seen = len(logs)

    def _show(self, entry) -> None:
        event = entry.dagster_event
        if event is None and _is_progress(entry.user_message):
            _say(f"    . {entry.step_key or '?'}: {entry.user_message}")
            return
        if event is None or event.event_type_value not in self.KINDS:
            return
        step = event.step_key or "?"
        kind = event.event_type_value
        if kind == "STEP_START":
            self.started[step] = entry.timestamp
            _say(f"  > {step} started")
        elif kind == "STEP_SUCCESS":
            took = entry.timestamp - self.started.get(step, entry.timestamp)
            _say(f"  + {step} done in {took:.1f}s")
        elif kind == "STEP_UP_FOR_RETRY":
            _say(f"  ~ {step} failed, retrying: {_first_line(event)}")
        elif kind == "STEP_FAILURE":
            _say(f"  ! {step} FAILED: {_first_line(event)}")
        else:
            data = event.event_specific_data
            evaluation = getattr(data, "asset_check_evaluation", data)
            name = getattr(evaluation, "check_name", "?")
            passed = getattr(evaluation, "passed", None)
            _say(f"    check {name}: {'passed' if passed else 'FAILED'}")


def _is_progress(message: str | None) -> bool:
    """Log lines of long steps (``prmforge.progress``, shard progress) carry an ETA or a final time."""
    return bool(message) and (" ETA " in message or ", done in " in message)


def _first_line(event) -> str:
    data = event.event_specific_data
    err = getattr(data, "error", None)
    text = (err.message if err is not None else event.message) or ""
    return text.strip().splitlines()[0][:300] if text.strip() else ""


# ---- planning a run -------------------------------------------------------------


@dataclass
class Phase:
    """One run: a set of assets, with a partition key or not."""

    title: str
    keys: list = field(default_factory=list)
    partition: str | None = None


def plan(defs, partitions: Sequence[str], select: str | None = None) -> list[Phase]:
    """Split the selected assets into runs Dagster can execute.

    Unpartitioned roots (policy model, benchmark) run once first; the
    per-dataset stages run once per partition; unpartitioned stages that
    read every dataset (PRM training, evaluation, registration) run once
    at the end, over all partitions.
    """
    from dagster import AssetSelection

    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    executable = {k for k in keys if graph.get(k).is_executable}
    # A multi-asset (seed_problems + quarantine + dropped) runs as a whole.
    chosen = (AssetSelection.from_string(select).required_multi_asset_neighbors().resolve(graph)
              if select else executable)
    chosen = chosen & executable

    partitioned = {k for k in chosen if graph.get(k).partitions_def is not None}
    all_partitioned = {k for k in executable if graph.get(k).partitions_def is not None}

    memo: dict = {}

    def after_partitioned(key) -> bool:
        """True if any ancestor of ``key`` is partitioned."""
        if key not in memo:
            parents = set(graph.get(key).parent_keys)
            memo[key] = bool(parents & all_partitioned) or any(after_partitioned(p) for p in parents
                                                               if graph.has(p))
        return memo[key]

    before = sorted((k for k in chosen - partitioned if not after_partitioned(k)), key=str)
    after = sorted((k for k in chosen - partitioned if after_partitioned(k)), key=str)
    phases: list[Phase] = []
    if before:
        phases.append(Phase("shared inputs", before))
    if partitioned:
        for p in partitions:
            phases.append(Phase(f"dataset {p}", sorted(partitioned, key=str), p))
    if after:
        phases.append(Phase("all datasets", after))
    return phases


def _plan_with(instance, defs, partitions: Sequence[str], select: str | None) -> list[Phase]:
    """:func:`plan`, resolving partitions against ``instance`` (not whatever
    partition-loading context a caller left behind)."""
    from dagster import partition_loading_context

    with partition_loading_context(dynamic_partitions_store=instance):
        return plan(defs, partitions, select)


def _names(keys: Sequence) -> str:
    return ", ".join(k.to_user_string() for k in keys)


def execute_phases(defs, instance, phases: Sequence[Phase], tags: dict[str, str] | None = None,
                   log_level: str = "WARNING", run_ids: list[str] | None = None,
                   run_config: dict[str, Any] | None = None) -> int:
    """Execute the phases in order, in this process; returns the number of failed runs.

    ``run_ids``, when given, receives the id of every run started (for the summary).

    Runs go to the persistent instance under the ``full_pipeline`` job, so the
    UI shows them with their logs. A failed dataset does not stop the other
    datasets; the final phase runs if at least one dataset succeeded (it
    trains on what exists) and the command exits non-zero.
    """
    from pipelines.jobs import FULL_PIPELINE_JOB

    job = defs.resolve_job_def(FULL_PIPELINE_JOB)
    failed = 0
    dataset_ok = 0
    dataset_runs = 0
    for i, phase in enumerate(phases, 1):
        if phase.title == "all datasets" and dataset_runs and not dataset_ok:
            _say(f"[{i}/{len(phases)}] {phase.title}: skipped, every dataset run failed")
            failed += 1
            continue
        _say(f"[{i}/{len(phases)}] {phase.title}: {_names(phase.keys)}")
        run_id = str(uuid.uuid4())
        if run_ids is not None:
            run_ids.append(run_id)
        start = time.time()
        with ProgressPrinter(instance, run_id):
            result = job.execute_in_process(
                instance=instance,
                partition_key=phase.partition,
                asset_selection=list(phase.keys),
                run_id=run_id,
                raise_on_error=False,
                tags={"prmforge/cli": "run", RUN_PROCESS_TAG: process_token(), **(tags or {})},
                run_config=_phase_config(run_config or {}, phase, log_level),
            )
        status = "succeeded" if result.success else "FAILED"
        _say(f"[{i}/{len(phases)}] {phase.title}: {status} in {time.time() - start:.1f}s (run {run_id})")
        if phase.partition is not None:
            dataset_runs += 1
            dataset_ok += int(result.success)
        if not result.success:
            failed += 1
    return failed


def _phase_config(run_config: dict[str, Any], phase: Phase, log_level: str) -> dict[str, Any]:
    """The user's run config for one phase: its resources, and the ops config of the phase's assets only."""
    names = {key.to_python_identifier() for key in phase.keys}  # an asset's op name
    cfg: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if run_config.get("resources"):
        cfg["resources"] = run_config["resources"]
    ops = {k: v for k, v in (run_config.get("ops") or {}).items() if k in names}
    if ops:
        cfg["ops"] = ops
    return cfg


def load_run_config(path: str | None) -> dict[str, Any]:
    """``--config FILE``: a YAML run config with ``resources`` and/or ``ops`` (one ConfigError if not)."""
    if not path:
        return {}
    import yaml

    from prmforge.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from exc
    if not isinstance(data, dict) or set(data) - {"resources", "ops"}:
        raise ConfigError(f"--config {path}: expected a mapping with 'resources' and/or 'ops' only")
    return data


# ---- commands -----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    _apply_profile(args.profile)
    # Entering the instance makes it the current one for everything Dagster
    # resolves during the command (definitions state, partitions).
    with get_instance() as instance:
        return _run(args, instance)


def _run(args: argparse.Namespace, instance) -> int:
    from assets.partitions import DATASETS_PARTITIONS_NAME
    from prmforge.registry import load_registry

    partitions = _split(args.partitions) if args.partitions else sorted(load_registry())
    run_config = load_run_config(args.config)
    preflight(partitions)  # before anything is added to the instance or loaded
    added = register_partitions(instance)
    if args.partitions:
        register_partitions(instance, partitions)
    defs = _load_defs()
    from prmforge.profiles import active_profile

    _say(f"prmforge run: profile {active_profile()}, DAGSTER_HOME {env.get('DAGSTER_HOME')}")
    if added:
        _say(f"registered dataset partitions: {', '.join(added)}")
    _say(f"datasets: {', '.join(partitions) or '(none)'}"
         f" (all known: {', '.join(instance.get_dynamic_partitions(DATASETS_PARTITIONS_NAME))})")
    phases = _plan_with(instance, defs, partitions, args.select)
    if not phases:
        _say("nothing selected")
        return 2
    run_ids: list[str] = []
    failed = execute_phases(defs, instance, phases, log_level="DEBUG" if args.verbose else "WARNING",
                            run_ids=run_ids, run_config=run_config)
    from pipelines.summary import print_summary

    print_summary(_say, instance, run_ids, _tracking_uri())
    _say("done: all runs succeeded" if not failed else f"done: {failed} run(s) failed; see `prmforge ui`")
    return 0 if not failed else 1


def preflight(partitions: Sequence[str]) -> None:
    """Dataset keys and sources that cannot work: one ConfigError (exit 2) before any run starts."""
    from prmforge.ingest.preflight import check_datasets
    from prmforge.storage import Storage

    check_datasets(partitions, Storage())


def _tracking_uri() -> str:
    return env.default_tracking_uri()


def _split(raw: str) -> list[str]:
    return [p.strip() for p in raw.split(",") if p.strip()]


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        for part in _split(item):
            if "=" not in part:
                raise SystemExit(f"{what}: expected NAME=VALUE, got {part!r}")
            k, v = part.split("=", 1)
            out[k.strip()] = yaml.safe_load(v) if what == "--option" else v.strip()
    return out


def cmd_add_dataset(args: argparse.Namespace) -> int:
    from prmforge.registry import RegistryError, add_dataset, default_registry_path

    try:
        spec = add_dataset(
            args.key, args.source, format=args.format, adapter=args.adapter, split=args.split,
            columns=_pairs(args.column_map, "--column-map"), options=_pairs(args.option, "--option"),
            description=args.description or "", overwrite=args.overwrite,
        )
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _say(f"added {spec.key!r} to {default_registry_path()}: source {spec.source!r}, format {spec.format}, "
         f"adapter {spec.adapter}, split {spec.split}, columns {spec.columns or '{}'}")
    if not args.no_partition:
        with get_instance() as instance:
            added = register_partitions(instance, [spec.key])
        if added:
            _say(f"added partition {spec.key!r}; ingest it with `prmforge run --partitions {spec.key}`, "
                 "from the UI, or let the new-dataset sensor do it")
    return 0


def workspace_args() -> list[str]:
    ws = REPO_ROOT / "workspace.yaml"
    return ["-w", str(ws)] if ws.exists() else ["-m", "pipelines.definitions", "-a", "defs"]


def ui_command(host: str, port: int) -> list[str]:
    """``dagster dev`` (webserver + daemon: sensors, schedules, automation, backfills)."""
    return [sys.executable, "-m", "dagster", "dev", *workspace_args(), "-h", host, "-p", str(port)]


def cmd_ui(args: argparse.Namespace) -> int:
    _apply_profile(args.profile)
    home_dir = dagster_home()
    with get_instance():  # reaps runs of dead prmforge processes before the UI shows them
        pass
    cmd = ui_command(args.host, args.port)
    _say(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME {home_dir}); Ctrl-C stops it")
    proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT) if (REPO_ROOT / "workspace.yaml").exists() else None,
                            env=env.child_env(DAGSTER_HOME=str(home_dir),
                                              # `dagster dev` announces its own supersession (a FutureWarning)
                                              PYTHONWARNINGS="ignore::FutureWarning"))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


LAUNCH_BACKFILL = """
mutation($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
  }
}
"""


class BackfillSubmitError(RuntimeError):
    """Dagster refused the backfill (or could not load the code location to plan it)."""


def submit_backfill(defs, instance, partitions: Sequence[str] | None, select: str | None,
                    title: str | None = None) -> str:
    """Submit an asset backfill the daemon executes, the same object the UI creates.

    ``partitions=None`` means every registered dataset. The backfill shows in
    the UI's Backfills tab; ``dagster dev`` / ``prmforge ui`` or the deployed
    daemon runs it (per-dataset runs, within the gpu pool).

    How: the UI's own ``launchPartitionBackfill`` GraphQL mutation, run by
    Dagster's public ``dagster-graphql`` command against this instance and
    the code location (Dagster has no public Python call that creates an
    asset backfill). ``defs`` resolves ``select`` to asset keys here, so a bad
    selection fails before anything is submitted.
    """
    import json

    from dagster import AssetSelection, partition_loading_context

    graph = defs.resolve_asset_graph()
    executable = {k for k in graph.get_all_asset_keys() if graph.get(k).is_executable}
    with partition_loading_context(dynamic_partitions_store=instance):
        keys = (AssetSelection.from_string(select).required_multi_asset_neighbors().resolve(graph) & executable
                if select else executable)
    params: dict[str, Any] = {
        "assetSelection": [{"path": list(k.path)} for k in sorted(keys, key=str)],
        "title": title,
        "description": "submitted by `prmforge backfill`",
        "tags": [{"key": "prmforge/cli", "value": "backfill"}],
    }
    if partitions is None:
        params["allPartitions"] = True
    else:
        params["partitionNames"] = list(partitions)
    graphql = Path(sys.executable).with_name("dagster-graphql")
    with tempfile.TemporaryDirectory(prefix="prmforge-backfill-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [str(graphql if graphql.exists() else "dagster-graphql"), "-m", "pipelines.definitions",
               "-a", "defs", "-d", str(REPO_ROOT), "-t", LAUNCH_BACKFILL,
               "-v", json.dumps({"backfillParams": params}), "--output", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO_ROOT), timeout=600,
                              env=env.child_env(DAGSTER_HOME=str(instance.root_directory)))
        try:
            result = json.loads(out.read_text(encoding="utf-8"))["data"]["launchPartitionBackfill"]
        except (OSError, KeyError, TypeError, ValueError) as exc:
            detail = out.read_text(encoding="utf-8") if out.exists() else (proc.stderr or proc.stdout)
            raise BackfillSubmitError(f"dagster-graphql failed (exit {proc.returncode}): "
                                      f"{detail.strip()[-1500:]}") from exc
    if result.get("__typename") != "LaunchBackfillSuccess":
        raise BackfillSubmitError(f"backfill refused: {result.get('__typename')}: {result.get('message', result)}")
    return str(result["backfillId"])


def cmd_backfill(args: argparse.Namespace) -> int:
    _apply_profile(args.profile)
    with get_instance() as instance:
        return _backfill(args, instance)


def _backfill(args: argparse.Namespace, instance) -> int:
    if not args.all:
        preflight(_split(args.partitions))  # before anything is added to the instance or loaded
    register_partitions(instance)
    if args.all:
        from assets.partitions import DATASETS_PARTITIONS_NAME

        partitions = list(instance.get_dynamic_partitions(DATASETS_PARTITIONS_NAME))
    else:
        partitions = _split(args.partitions)
        register_partitions(instance, partitions)
    defs = _load_defs()
    if not partitions:
        print("error: no partitions to backfill", file=sys.stderr)
        return 2
    if args.daemon:
        backfill_id = submit_backfill(defs, instance, None if args.all else partitions, args.select,
                                      title=f"prmforge backfill {','.join(partitions)[:60]}")
        _say(f"submitted backfill {backfill_id} over {len(partitions)} dataset(s): {', '.join(partitions)}; "
             "the Dagster daemon (`prmforge ui` or the deployment) executes it; follow it in the UI's "
             "Backfills tab")
        return 0
    _say(f"backfill in this process over {len(partitions)} dataset(s): {', '.join(partitions)}")
    run_ids: list[str] = []
    failed = execute_phases(defs, instance, _plan_with(instance, defs, partitions, args.select),
                            tags={"prmforge/backfill": uuid.uuid4().hex[:8]}, run_ids=run_ids)
    from pipelines.summary import print_summary

    print_summary(_say, instance, run_ids, _tracking_uri())
    _say("done: all runs succeeded" if not failed else f"done: {failed} run(s) failed")
    return 0 if not failed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prmforge", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline in this process (seed problems to a registered PRM)")
    run.add_argument("--profile", choices=PROFILE_CHOICES, help="sizes of every stage (default: PRMFORGE_PROFILE or demo)")
    run.add_argument("--select", help="Dagster asset selection, e.g. 'key:seed_problems' or 'key:policy_rollouts+'")
    run.add_argument("--partitions", help="comma-separated dataset keys (default: every registry dataset)")
    run.add_argument("--verbose", action="store_true", help="also print Dagster's own event log")
    run.add_argument("--config", metavar="FILE",
                     help="YAML run config: `resources` (e.g. policy_engine backend vllm) and `ops` of any asset")
    run.set_defaults(func=cmd_run)

    add = sub.add_parser("add-dataset", help="add a dataset to the registry and as a partition")
    add.add_argument("key", help="dataset key: a-z, 0-9, '_', '-', '.'")
    add.add_argument("--source", required=True,
                     help="world | incoming | bundled:<file> | hub:<id> | path, file:// or s3:// URL")
    add.add_argument("--format", default="auto", choices=["auto", "jsonl", "json", "parquet", "csv"])
    add.add_argument("--adapter", default="auto", choices=["auto", "gsm8k", "math", "generic", "world"])
    add.add_argument("--split", default="train")
    add.add_argument("--column-map", action="append", metavar="ROLE=COLUMN",
                     help="e.g. problem=question,answer=final (roles: problem, answer, split, id, solution)")
    add.add_argument("--option", action="append", metavar="NAME=VALUE", help="adapter/reader option")
    add.add_argument("--description")
    add.add_argument("--overwrite", action="store_true", help="replace an existing entry")
    add.add_argument("--no-partition", action="store_true", help="only edit the registry")
    add.set_defaults(func=cmd_add_dataset)

    ui = sub.add_parser("ui", help="open the Dagster UI (webserver + daemon) on the same DAGSTER_HOME")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument("--profile", choices=PROFILE_CHOICES)
    ui.set_defaults(func=cmd_ui)

    bf = sub.add_parser("backfill", help="materialise many dataset partitions")
    group = bf.add_mutually_exclusive_group(required=True)
    group.add_argument("--partitions", help="comma-separated dataset keys")
    group.add_argument("--all", action="store_true", help="every registered dataset")
    bf.add_argument("--select", help="Dagster asset selection (default: the whole graph)")
    bf.add_argument("--profile", choices=PROFILE_CHOICES)
    bf.add_argument("--daemon", action="store_true",
                    help="submit a backfill for the Dagster daemon (shown in the UI) instead of running here")
    bf.set_defaults(func=cmd_backfill)

    ev = sub.add_parser("evaluate", help="score ProcessBench files with any PRM folder (metrics, predictions)")
    ev.add_argument("--prm", required=True, help="PRM folder, s3:// / file:// storage folder, or a registry URI "
                    "(models:/prmforge-prm@champion)")
    ev.add_argument("--format", default="auto",
                    choices=["auto", "prmforge", "qwen2-prm", "math-shepherd", "token-classify"])
    ev.add_argument("--processbench", nargs="+", required=True, metavar="FILE", help="ProcessBench .json/.jsonl files")
    ev.add_argument("--out", required=True, help="folder for predictions.jsonl, step_scores.parquet, metrics.json")
    ev.add_argument("--backend", default="hf", choices=["hf", "vllm"])
    ev.add_argument("--threshold", type=float, default=0.5, help="a step below this P(correct) is the first error")
    ev.add_argument("--limit", type=int, help="first N samples of each file")
    ev.add_argument("--no-mlflow", action="store_true", help="do not log the evaluation run to MLflow")
    ev.set_defaults(func=cmd_evaluate)

    sv = sub.add_parser("serve", help="serve a PRM's step scores with vLLM on 127.0.0.1 (/pooling endpoint)")
    sv.add_argument("--prm", default="models:/prmforge-prm@champion",
                    help="PRM folder, storage URI or registry URI (default: the champion)")
    sv.add_argument("--port", type=int, default=8100)
    sv.add_argument("--kv-cache-gib", type=float, default=1.0, help="KV cache on vLLM's CPU build, GiB")
    sv.add_argument("--print-command", action="store_true", help="print the vLLM server line and exit")
    sv.set_defaults(func=cmd_serve)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    """``prmforge serve``: vLLM's OpenAI-compatible server on the PRM's qwen2_prm/ export (see prmforge.prm.serve)."""
    import shlex
    import shutil
    import signal

    from prmforge.model_files import ModelSourceError
    from prmforge.prm.serve import SERVED_NAME, servable_folder, server_command

    try:
        folder = servable_folder(args.prm)
    except ModelSourceError as exc:
        from prmforge.errors import ConfigError

        raise ConfigError(str(exc)) from exc
    cmd = server_command(folder, args.port, args.kv_cache_gib, cpu=shutil.which("nvidia-smi") is None)
    if args.print_command:
        print(shlex.join(cmd))
        return 0
    _say(f"serving {args.prm} ({folder}) as {SERVED_NAME!r} on http://127.0.0.1:{args.port}/pooling; Ctrl-C stops it")
    proc = subprocess.Popen(cmd, start_new_session=True)  # its own group: engine core and workers stop with it
    try:
        return proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``prmforge evaluate``: any PRM on ProcessBench files; logic in :mod:`prmforge.prm.evaluate_any`."""
    from prmforge.model_files import ModelSourceError
    from prmforge.prm.benchmarks import BenchmarkSourceError
    from prmforge.prm.evaluate_any import evaluate_prm

    try:
        metrics = evaluate_prm(args.prm, args.processbench, args.out, args.format, args.backend, args.threshold,
                               args.limit, log_mlflow=not args.no_mlflow)
    except (ModelSourceError, BenchmarkSourceError) as exc:
        from prmforge.errors import ConfigError

        raise ConfigError(str(exc)) from exc
    mean = metrics["processbench"].get("mean", {})
    _say(f"{metrics['format']} PRM via {args.backend}: mean F1 {mean.get('f1', 0.0):.3f} -> {args.out}")
    return 0


def _quiet_warnings() -> None:
    """Hide Dagster's preview/beta notices: they are for developers, not users of the CLI."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*(is currently in (beta|preview)|preview).*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a configuration mistake is one line on stderr and exit code 2 (never retried)."""
    from prmforge.errors import ConfigError

    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        _quiet_warnings()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print("prmforge: error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, even for YAML errors
        return 2


if __name__ == "__main__":
    sys.exit(main())
