"""kill -9 at seeded random points of rollouts, MC labelling and PRM training; reruns resume to identical results.

Each stage runs as a real subprocess. It is killed at 5 random points (a
random progress target plus a random extra delay, so kills land both between
and inside units of work), restarted after each kill, and finally run to the
end. The result must equal, row for row (or tensor for tensor), an
uninterrupted run with the same seed, and the last run must start from the
work left by the killed ones, not from scratch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from rel_helpers import REPO, child_env, count_files, kill_at_random_points, rng, run_to_end
from rollout_helpers import tiny_policy, world_seed_table
from stage_runner import run_mc, run_train

from prmforge.prompts import PolicyPrompt
from prmforge.storage import Storage

torch.set_num_threads(1)

KILLS = 5
PART = "world-crash"
RUNNER = str(REPO / "tests" / "reliability" / "stage_runner.py")


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


def _roots(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name in ("clean", "killed"):
        (tmp_path / name).mkdir()
        out[name] = (tmp_path / name).as_uri()
    return out


def _rollout_cmd(root: str, model: Path, settings: dict) -> list[str]:
    return [sys.executable, "-m", "prmforge.rollouts_cli", "--root", root, "--partition", PART, "--model", str(model),
            "--engine", json.dumps({"device": "cpu", "batch_size": 16}), "--settings", json.dumps(settings)]


ROLLOUT_SETTINGS = {"n": 2, "max_tokens": 40, "shard_size": 2, "max_problems": 1000, "seed": 7}


def _rollouts_in_process(root: str, model: Path, capsys: pytest.CaptureFixture) -> dict:
    """The uninterrupted reference: the same CLI ``main`` in this process (saves one interpreter start)."""
    from prmforge.rollouts_cli import main

    assert main(_rollout_cmd(root, model, ROLLOUT_SETTINGS)[3:]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_kill9_rollouts_resume_identical(tmp_path: Path, policy_dir: Path, fault, capsys) -> None:
    seed = world_seed_table(30, dataset=PART)  # 15 shards of 2 problems
    roots = _roots(tmp_path)
    for root in roots.values():
        Storage(root).write_dataset("seed_problems", seed, PART)
    env = child_env()
    clean = _rollouts_in_process(roots["clean"], policy_dir, capsys)
    total = clean["shards_total"]
    assert total == 15 and clean["shards_computed"] == 15

    shard_root = Path(Storage(roots["killed"]).path("shards", "policy_rollouts", PART))
    cmd = _rollout_cmd(roots["killed"], policy_dir, ROLLOUT_SETTINGS)
    log = kill_at_random_points(cmd, env, lambda: count_files(shard_root), total, KILLS, rng("rollouts"))
    before = count_files(shard_root)
    resumed = run_to_end(cmd, env)
    assert resumed["shards_reused"] == before > 0  # resumed, not restarted
    assert resumed["shards_computed"] == total - before
    a = Storage(roots["clean"]).read_dataset("policy_rollouts", PART)
    b = Storage(roots["killed"]).read_dataset("policy_rollouts", PART)
    assert b.num_rows == 60 and len(set(b.column("rollout_id").to_pylist())) == 60
    assert a.equals(b)
    fault("kill -9 of rollout generation (`python -m prmforge.rollouts_cli`)", len(log.kill_points),
          "rerun resumes from stored shards and finishes; final policy_rollouts equal an uninterrupted run row "
          "for row", shards_total=total, shards_done_at_each_kill=log.kill_points,
          extra_delay_ms_after_target=log.delays_ms, shards_reused_by_final_run=resumed["shards_reused"],
          rows=b.num_rows, rows_equal=a.equals(b))


def test_kill9_mc_labelling_resume_identical(tmp_path: Path, policy_dir: Path, fault) -> None:
    from prmforge.engines.factory import EngineConfig, make_engine
    from prmforge.rollouts import DATASET, RolloutSettings, generate_rollouts

    roots = _roots(tmp_path)
    # Rollouts to label: made once, copied to both roots.
    store = Storage(roots["clean"])
    seed = world_seed_table(24, dataset=PART)
    store.write_dataset("seed_problems", seed, PART)
    cfg = EngineConfig(model=str(policy_dir), device="cpu", batch_size=16)
    run = generate_rollouts(store, PART, seed, RolloutSettings(**{**ROLLOUT_SETTINGS, "shard_size": 24}),
                            cfg.identity(), lambda: make_engine(cfg), True, prompt=PolicyPrompt("world"))
    for root in roots.values():
        Storage(root).write_dataset(DATASET, run.table, PART)
    settings = {"mode": "per_step", "k": 2, "max_tokens": 12, "shard_size": 3, "batch_prefixes": 16, "seed": 3}

    def cmd(root: str) -> list[str]:
        return [sys.executable, RUNNER, "mc", "--root", root, "--partition", PART, "--model", str(policy_dir),
                "--settings", json.dumps(settings)]

    env = child_env()
    clean = run_mc(argparse.Namespace(root=roots["clean"], partition=PART, model=str(policy_dir),
                                      settings=json.dumps(settings)))
    total = clean["shards_total"]
    assert total == 16 and clean["shards_computed"] == total  # 48 rollouts / 3

    shard_root = Path(Storage(roots["killed"]).path("shards", "mc_step_labels", PART))
    log = kill_at_random_points(cmd(roots["killed"]), env, lambda: count_files(shard_root), total, KILLS,
                                rng("mc"))
    before = count_files(shard_root)
    resumed = run_to_end(cmd(roots["killed"]), env)
    assert resumed["run_key"] == clean["run_key"]
    assert resumed["shards_reused"] == before > 0 and resumed["shards_computed"] == total - before
    a = Storage(roots["clean"]).read_dataset("mc_step_labels", PART)
    b = Storage(roots["killed"]).read_dataset("mc_step_labels", PART)
    assert b.num_rows == 48 and len(set(b.column("rollout_id").to_pylist())) == 48
    assert a.equals(b)
    statuses = sorted(set(b.column("status").to_pylist()))
    fault("kill -9 of MC labelling (Dagster materialisation of `mc_step_labels` in a subprocess)",
          len(log.kill_points), "rerun resumes from stored shards; final mc_step_labels equal an uninterrupted "
          "run row for row", shards_total=total, shards_done_at_each_kill=log.kill_points,
          extra_delay_ms_after_target=log.delays_ms, shards_reused_by_final_run=resumed["shards_reused"], rows=b.num_rows,
          statuses=statuses, rows_equal=a.equals(b))


def _latest_checkpoint(root: str, run_key_holder: dict) -> int:
    base = Path(Storage(root).path("checkpoints", "prm"))
    if not base.is_dir():
        return 0
    steps = [int(p.parent.name[5:]) for p in base.glob("*/step-*/_COMPLETE")]
    return max(steps, default=0)


def test_kill9_training_resumes_from_checkpoint(tmp_path: Path, fault) -> None:
    from prm_helpers import tiny_backbone, world_rows
    from safetensors.torch import load_file

    base = tiny_backbone(tmp_path / "bb", hidden=48, layers=2)
    rows, _ = world_rows(64, seed=4, dataset="world-a")
    rows_file = tmp_path / "rows.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), rows_file)
    settings = {"base_model": base, "max_length": 192, "epochs": 2.0, "micro_batch_size": 8, "lr": 2e-3,
                "checkpoint_every": 1, "seed": 5, "bf16": False, "max_steps": 16}
    roots = _roots(tmp_path)

    def cmd(root: str) -> list[str]:
        return [sys.executable, RUNNER, "train", "--root", root, "--rows", str(rows_file), "--base", base,
                "--settings", json.dumps(settings)]

    env = child_env()
    clean = run_train(argparse.Namespace(root=roots["clean"], rows=str(rows_file), base=base,
                                         settings=json.dumps(settings)))
    total = clean["steps"]
    assert clean["resumed_from"] == 0 and total == 16

    log = kill_at_random_points(cmd(roots["killed"]), env, lambda: _latest_checkpoint(roots["killed"], {}),
                                total, KILLS, rng("train"))
    last = _latest_checkpoint(roots["killed"], {})
    resumed = run_to_end(cmd(roots["killed"]), env)
    assert resumed["resumed_from"] == last > 0  # from its last checkpoint, not from scratch
    assert resumed["run_key"] == clean["run_key"]

    def weights(root: str, run_key: str) -> dict[str, torch.Tensor]:
        folder = Path(Storage(root).path("models", "prm", run_key))
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
        return out

    wa, wb = weights(roots["clean"], clean["run_key"]), weights(roots["killed"], resumed["run_key"])
    assert wa.keys() == wb.keys() and len(wa) > 0
    equal = all(torch.equal(wa[k], wb[k]) for k in wa)
    assert equal
    fault("kill -9 of PRM training (`prmforge.prm.pipeline.fit` in a subprocess, checkpoint every step)",
          len(log.kill_points), "rerun starts from the last complete checkpoint (step > 0); final weights equal "
          "an uninterrupted run tensor for tensor", optimizer_steps=total,
          checkpoint_step_at_each_kill=log.kill_points, extra_delay_ms_after_target=log.delays_ms,
          final_run_resumed_from_step=resumed["resumed_from"], tensors_compared=len(wa), weights_equal=equal)
