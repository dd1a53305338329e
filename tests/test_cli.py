"""The prmforge CLI against a persistent DAGSTER_HOME, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets.partitions import DATASETS_PARTITIONS_NAME
from pipelines import cli
from prmforge.storage import Storage

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_home: Path) -> Path:
    """A private registry and DAGSTER_HOME; returns the DAGSTER_HOME path."""
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        "datasets:\n  gsm8k-sample: {source: 'bundled:gsm8k_sample.jsonl', format: jsonl, adapter: gsm8k}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("PRMFORGE_REGISTRY", str(registry))
    home = _isolated_home / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # restored after the test
    monkeypatch.setenv("PRMFORGE_MAX_RETRIES", "0")
    return home


def test_cli_module_does_not_import_dagster() -> None:
    code = "import sys, pipelines.cli; assert 'dagster' not in sys.modules, 'dagster imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    help_out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True,
                              cwd=REPO, timeout=60)
    assert help_out.returncode == 0 and "add-dataset" in help_out.stdout and "backfill" in help_out.stdout


def test_dagster_home_is_created_with_instance_config(env: Path) -> None:
    cli.dagster_home()
    text = (env / "dagster.yaml").read_text()
    assert "default_limit: 1" in text
    instance = cli.get_instance()
    assert Path(instance.root_directory) == env
    assert instance.event_log_storage.supports_global_concurrency_limits


def test_add_dataset_registers_entry_and_partition(env: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text('{"q": "1+1?", "a": "2"}\n')
    rc = cli.main(["add-dataset", "mine", "--source", str(data), "--format", "jsonl", "--adapter", "generic",
                   "--column-map", "problem=q,answer=a", "--split", "test"])
    assert rc == 0
    from prmforge.registry import load_registry

    spec = load_registry()["mine"]
    assert (spec.columns, spec.split, spec.format) == ({"problem": "q", "answer": "a"}, "test", "jsonl")
    assert "mine" in cli.get_instance().get_dynamic_partitions(DATASETS_PARTITIONS_NAME)

    # Bad input: a clear error and exit code 2, the registry unchanged.
    assert cli.main(["add-dataset", "Bad Key", "--source", str(data)]) == 2
    assert cli.main(["add-dataset", "mine", "--source", "world"]) == 2  # exists; needs --overwrite
    err = capsys.readouterr().err
    assert "Bad Key" in err and "already registered" in err
    assert set(load_registry()) == {"gsm8k-sample", "mine"}


def test_run_selection_shows_progress_and_lands_in_the_instance(env: Path, capsys) -> None:
    rc = cli.main(["run", "--profile", "tiny", "--select", "key:seed_problems", "--partitions", "gsm8k-sample"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "> seed_problems started" in out and "+ seed_problems done" in out and "succeeded" in out
    assert "check rows_conserved: passed" in out

    instance = cli.get_instance()
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="full_pipeline", tags={"prmforge/cli": "run"}))
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert runs[0].tags.get("dagster/partition") == "gsm8k-sample"
    assert Storage().dataset_exists("seed_problems", "gsm8k-sample")


def test_backfill_in_process_and_for_the_daemon(env: Path, capsys) -> None:
    rc = cli.main(["backfill", "--partitions", "gsm8k-sample,world-small", "--select", "key:seed_problems",
                   "--profile", "tiny"])
    captured = capsys.readouterr()
    # world-small is not in the registry: a configuration error, one line, exit 2, nothing started.
    assert rc == 2 and "dataset 'world-small' is not registered" in captured.err
    assert "succeeded" not in captured.out

    rc = cli.main(["backfill", "--partitions", "gsm8k-sample", "--select", "key:seed_problems", "--profile", "tiny"])
    out = capsys.readouterr().out
    assert rc == 0 and "dataset gsm8k-sample: succeeded" in out
    # The summary says what happened to the rows, and where to look.
    assert "seed_problems[gsm8k-sample]: rows_read 20, accepted " in out and "`prmforge ui`" in out

    instance = cli.get_instance()
    assert cli.main(["backfill", "--all", "--daemon", "--select", "key:seed_problems"]) == 0
    backfills = instance.get_backfills()
    assert len(backfills) == 1
    data = backfills[0].asset_backfill_data
    targeted = data.target_subset.get_partitions_subset(dg.AssetKey("seed_problems")).get_partition_keys()
    assert sorted(targeted) == sorted(instance.get_dynamic_partitions(DATASETS_PARTITIONS_NAME))


def test_ui_command_binds_loopback_on_the_workspace() -> None:
    cmd = cli.ui_command("127.0.0.1", 3123)
    assert cmd[1:4] == ["-m", "dagster", "dev"]
    assert "-h" in cmd and cmd[cmd.index("-h") + 1] == "127.0.0.1"
    assert cmd[cmd.index("-w") + 1] == str(REPO / "workspace.yaml")


def test_run_config_file_reaches_resources_and_selected_ops(env: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "vllm.yaml"
    cfg.write_text("resources:\n  policy_engine:\n    config: {backend: vllm, enforce_eager: true}\n"
                   "ops:\n  policy_rollouts:\n    config: {n: 3}\n", encoding="utf-8")
    rc = cli.main(["run", "--profile", "tiny", "--select", "key:seed_problems", "--partitions", "gsm8k-sample",
                   "--config", str(cfg)])
    assert rc == 0, capsys.readouterr().out
    run = cli.get_instance().get_runs(filters=dg.RunsFilter(job_name="full_pipeline"))[0]
    assert run.run_config["resources"]["policy_engine"]["config"] == {"backend": "vllm", "enforce_eager": True}
    assert "ops" not in run.run_config  # policy_rollouts was not in this run's selection

    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: {backend: vllm}\n", encoding="utf-8")
    assert cli.main(["run", "--profile", "tiny", "--config", str(bad)]) == 2
    assert "expected a mapping with 'resources' and/or 'ops' only" in capsys.readouterr().err
