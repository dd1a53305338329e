"""Kill -9 the rollout generation at shard boundaries / mid-shard, rerun, compare.

``run_cli`` and ``kill_when_shards`` are reusable: the reliability tests kill
at more (random) points with the same helpers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rollout_helpers import tiny_policy, world_seed_table

from prmforge.rollouts import DATASET
from prmforge.storage import Storage

REPO = Path(__file__).resolve().parents[1]
PART = "world-demo"
SETTINGS = {"n": 2, "max_tokens": 48, "shard_size": 3, "max_problems": 1000, "seed": 11}


def cli_args(root: str, model: Path, settings: dict = SETTINGS) -> list[str]:
    return [sys.executable, "-m", "prmforge.rollouts_cli", "--root", root, "--partition", PART,
            "--model", str(model), "--engine", json.dumps({"device": "cpu", "batch_size": 8}),
            "--settings", json.dumps(settings)]


def _env() -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    return env


def run_cli(root: str, model: Path, settings: dict = SETTINGS) -> dict:
    out = subprocess.run(cli_args(root, model, settings), cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def shard_count(root: str) -> int:
    store = Storage(root)
    base = store.path("shards", DATASET, PART)
    if not os.path.isdir(base):
        return 0
    return sum(1 for d in os.listdir(base) for f in os.listdir(os.path.join(base, d))
               if f.startswith("shard-") and f.endswith(".parquet"))


def kill_when_shards(root: str, model: Path, at_least: int, settings: dict = SETTINGS) -> int:
    """Start the CLI, SIGKILL it once ``at_least`` shards exist; return the count seen at the kill."""
    proc = subprocess.Popen(cli_args(root, model, settings), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            n = shard_count(root)
            if n >= at_least:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return n
            if proc.poll() is not None:
                pytest.fail(f"rollout process ended (rc={proc.returncode}) before {at_least} shards")
            time.sleep(0.005)
        pytest.fail("timed out waiting for shards")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return -1


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


def test_killed_run_resumes_to_identical_table(tmp_path: Path, model_dir: Path) -> None:
    seed = world_seed_table(24)  # 8 shards of 3 problems
    roots = {}
    for name in ("clean", "killed"):
        d = tmp_path / name
        d.mkdir()
        roots[name] = d.as_uri()
        Storage(roots[name]).write_dataset("seed_problems", seed, PART)

    clean = run_cli(roots["clean"], model_dir)
    assert clean["shards_total"] == 8 and clean["shards_computed"] == 8

    first = kill_when_shards(roots["killed"], model_dir, 2)
    second = kill_when_shards(roots["killed"], model_dir, first + 2)
    assert 2 <= first < second < 8
    resumed = run_cli(roots["killed"], model_dir)
    assert resumed["shards_reused"] == second
    assert resumed["shards_computed"] == 8 - second
    a = Storage(roots["clean"]).read_dataset(DATASET, PART)
    b = Storage(roots["killed"]).read_dataset(DATASET, PART)
    assert b.num_rows == 48
    assert len(set(b.column("rollout_id").to_pylist())) == 48  # no duplicates, no gaps
    assert a.equals(b)  # row for row
