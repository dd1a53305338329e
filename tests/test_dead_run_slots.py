"""A run whose process is killed with SIGKILL does not keep its ``gpu`` pool slot.

A real ``prmforge`` run (``cli.execute_phases``, the code path of ``prmforge
run``/``backfill``) executes a GPU-pool step in a subprocess against the
persistent DAGSTER_HOME; the test kills that process with SIGKILL while the
step holds the only ``gpu`` slot, shows the slot is still held, then shows the
next prmforge command (``cli.get_instance``) marks the run failed and frees the
slot, so a following GPU step runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from daemon_helpers import dagster_daemon, kill_processes_naming, wait_for, write_workspace

from pipelines import cli
from pipelines.automation import GPU_POOL

REPO = Path(__file__).resolve().parents[1]

# A stand-in for a GPU stage (in the gpu pool, as the real one) that holds its slot until killed.
RUN_SCRIPT = """
import os, sys, time
from pathlib import Path
import dagster as dg
from pipelines.automation import GPU_POOL
from pipelines import cli

marker = Path(sys.argv[1])

@dg.asset(name="prm_model", pool=GPU_POOL)
def gpu_step() -> dg.MaterializeResult:
    marker.write_text(str(os.getpid()))
    time.sleep(600)
    return dg.MaterializeResult()

defs = dg.Definitions(assets=[gpu_step], jobs=[dg.define_asset_job("full_pipeline")])
with cli.get_instance() as instance:
    cli.execute_phases(defs, instance, [cli.Phase("gpu", [dg.AssetKey("prm_model")])])
"""


@dg.asset(name="prm_model", pool=GPU_POOL)
def quick_gpu_step() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"ran": True})


@pytest.fixture
def dagster_home(_isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test's DAGSTER_HOME; what the killed runs left running under it is reaped at the end."""
    home = _isolated_home / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PRMFORGE_MAX_RETRIES", "0")
    yield home
    kill_processes_naming(home)


def test_process_token_names_this_process_and_detects_a_dead_one() -> None:
    assert cli.process_gone(cli.process_token()) is False
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    token = cli.process_token(child.pid)
    assert cli.process_gone(token) is False
    child.kill()
    child.wait(10)
    assert cli.process_gone(token) is True
    assert cli.process_gone(f"another-host:{os.getpid()}:1") is None  # cannot tell: never reaped


def test_sigkilled_run_frees_its_gpu_slot_for_the_next_gpu_step(dagster_home: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "gpu_run.py"
    script.write_text(RUN_SCRIPT)
    marker = tmp_path / "holding-the-gpu"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(marker)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the run process exited early:\n{proc.stdout.read()}")
            assert time.time() < deadline, "the GPU step never started"
            time.sleep(0.2)

        instance = cli.get_instance()  # a prmforge command while the run is alive: nothing to reap
        (run,) = instance.get_runs(filters=dg.RunsFilter(tags={"prmforge/cli": "run"}))
        assert run.status == dg.DagsterRunStatus.STARTED
        assert run.tags[cli.RUN_PROCESS_TAG].split(":")[1] == str(proc.pid)
        storage = instance.event_log_storage
        assert storage.get_concurrency_info(GPU_POOL).active_run_ids == {run.run_id}

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()

    # Nobody else notices a killed in-process run: it stays STARTED and keeps the slot.
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    assert storage.get_concurrency_info(GPU_POOL).active_run_ids == {run.run_id}

    # The next prmforge command reaps it.
    capsys.readouterr()
    instance = cli.get_instance()
    assert f"run {run.run_id}: its prmforge process (pid {proc.pid}) died" in capsys.readouterr().out
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    assert info.active_slot_count == 0 and info.slot_count == 1
    assert cli.reap_dead_runs(instance) == []  # once only

    # A following GPU step gets the slot (it would wait forever otherwise).
    step = [quick_gpu_step]
    assert step[0].op.pool == GPU_POOL
    outcome: dict[str, bool] = {}
    worker = threading.Thread(target=lambda: outcome.update(ok=dg.materialize(step, instance=instance).success),
                              daemon=True)
    worker.start()
    worker.join(180)
    assert outcome.get("ok") is True, "the next GPU step did not run"


# ---- runs launched by the daemon/UI (DefaultRunLauncher through a code server) ----------------

LOCATION = """
import os, time
from pathlib import Path
import dagster as dg
from pipelines.automation import GPU_POOL

@dg.asset(name="prm_model", pool=GPU_POOL)
def gpu_step() -> dg.MaterializeResult:
    # The step runs in a child of the run worker (multiprocess executor): record both.
    Path(os.environ["PRMFORGE_TEST_MARKER"]).write_text(f"{os.getppid()} {os.getpid()}")
    time.sleep(600)
    return dg.MaterializeResult()

defs = dg.Definitions(assets=[gpu_step],
                      jobs=[dg.define_asset_job("gpu_job", selection=["prm_model"])])
"""


def test_daemon_monitoring_frees_the_slot_of_a_killed_launched_run(dagster_home: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI/daemon path: a real ``dagster-daemon`` with the instance config the CLI ships.

    Only the delays are shortened (slots freed 2 s after the run ends, checked every 2 s). The run is
    submitted with ``dagster job launch``; the daemon's run queue launches it through a code server.
    """
    shipped = ("poll_interval_seconds: 30", "free_slots_after_run_end_seconds: 30")
    assert all(line in cli.DAGSTER_YAML for line in shipped) and "enabled: true" in cli.DAGSTER_YAML
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(
        cli.DAGSTER_YAML.replace(shipped[0], "poll_interval_seconds: 2").replace(shipped[1],
                                                                             "free_slots_after_run_end_seconds: 2"))
    location = tmp_path / "location.py"
    location.write_text(LOCATION)
    workspace = write_workspace(tmp_path / "workspace.yaml", location, "defs", "gpu_location")
    marker = tmp_path / "holding-the-gpu"
    monkeypatch.setenv("PRMFORGE_TEST_MARKER", str(marker))
    log = tmp_path / "daemon.log"
    killed: list[int] = []

    with dg.DagsterInstance.get() as instance, dagster_daemon(dagster_home, workspace, log):
        assert instance.run_monitoring_enabled  # the shipped config turns the monitoring daemon on
        launch = subprocess.run([str(Path(sys.executable).with_name("dagster")), "job", "launch",
                                 "-w", str(workspace), "-j", "gpu_job"], cwd=REPO, capture_output=True,
                                text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert launch.returncode == 0, launch.stdout + launch.stderr
        (run,) = instance.get_runs()
        try:
            wait_for(marker.exists, "the GPU step to start", 180, log)
            storage = instance.event_log_storage
            assert storage.get_concurrency_info(GPU_POOL).active_run_ids == {run.run_id}
            worker, step = (int(p) for p in marker.read_text().split())
            assert worker != os.getpid()
            for pid in (worker, step):  # the run's processes die, as on an OOM kill
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

            # The code server notices its dead run worker and marks the run failed ...
            wait_for(lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE,
                     "the code server to mark the run failed", 60, log)
            # ... and the daemon's monitoring frees its slot after the delay.
            wait_for(lambda: storage.get_concurrency_info(GPU_POOL).active_slot_count == 0,
                     "the monitoring daemon to free the slot", 60, log)
            assert storage.get_concurrency_info(GPU_POOL).slot_count == 1
        finally:
            for pid in {int(p) for p in marker.read_text().split()} - set(killed) if marker.exists() else ():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        step_def = [quick_gpu_step]
        outcome: dict[str, bool] = {}
        worker_thread = threading.Thread(
            target=lambda: outcome.update(ok=dg.materialize(step_def, instance=instance).success), daemon=True)
        worker_thread.start()
        worker_thread.join(180)
        assert outcome.get("ok") is True, "the next GPU step did not run"
