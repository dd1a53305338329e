"""A real ``dagster-daemon`` process on a test's ``DAGSTER_HOME``, as a deployment runs it.

Tests that need the daemon (run queue, backfills, run monitoring) start the
``dagster-daemon run`` command on a workspace file instead of calling the
daemon's private iteration functions: the daemon loads the code location in a
code server, launches runs through it with the ``DefaultRunLauncher``, and is
stopped (its whole process group) when the test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def kill_processes_naming(root: Path) -> list[int]:
    """SIGKILL every process whose command line names a path under ``root``; their pids.

    Why: when a run process is SIGKILLed, the ``tail -F`` children Dagster's compute
    log manager started to mirror its output are orphaned and never exit. A test that
    kills runs on purpose reaps what they leave under its own folder.
    """
    needle = str(root).encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited meanwhile
    return killed


def write_workspace(path: Path, python_file: Path, attribute: str, location_name: str) -> Path:
    """A workspace file with one code location loaded from ``python_file``, run from the repository."""
    path.write_text(yaml.safe_dump({"load_from": [{"python_file": {
        "relative_path": str(python_file), "attribute": attribute,
        "working_directory": str(REPO), "location_name": location_name}}]}))
    return path


@contextmanager
def dagster_daemon(dagster_home: Path, workspace: Path, log: Path) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run -w workspace`` in its own process group; every process of it ends on exit."""
    exe = Path(sys.executable).with_name("dagster-daemon")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "run", "-w", str(workspace)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # Code servers and run workers the daemon started share its process group; none may outlive it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(condition: Callable[[], object], what: str, timeout: float, log: Path | None = None,
             interval: float = 0.5) -> object:
    """Poll ``condition`` until it returns a truthy value; fail with the daemon's log tail on timeout."""
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
        time.sleep(interval)
