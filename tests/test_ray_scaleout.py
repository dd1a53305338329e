"""Sharded generation and labelling over a real local Ray cluster (2 CPUs, 127.0.0.1, no dashboard).

One Ray runtime serves the whole module. The tests need ``ray`` (the ``ray``
extra, installed by ``make install``): without it the import below fails the
module instead of skipping it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from dagster import AssetSpec, DagsterInstance, materialize
from ray_helpers import dies_once
from rollout_helpers import tiny_policy, world_seed_table

from assets.labels import mc_step_labels
from assets.partitions import DATASETS_PARTITIONS_NAME, dataset_partitions
from assets.rollouts import policy_rollouts
from prmforge import env
from prmforge.distributed.ray_pool import RayConnection, RayExecutor
from prmforge.engines.factory import make_engine
from prmforge.profiles import stage_settings
from prmforge.prompts import policy_prompt
from prmforge.rollouts import generate_rollouts
from prmforge.storage import Storage
from resources import build_resources
from resources.engine import EngineResource
from resources.ray import RayResource
from resources.storage import StorageResource

torch.set_num_threads(1)
PART = "world-demo"
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def ray_runtime() -> Iterator[None]:
    """One small local Ray runtime for the module: loopback only, 2 CPUs, 200 MB object store.

    ``ray`` is imported here, after :func:`env.ray_loopback_only`; a missing ``ray`` fails every test.
    """
    env.ray_loopback_only()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=200 * 1024 * 1024, log_to_driver=False, namespace="prmforge-tests",
             # workers import the helpers the tests pickle (ray_helpers) from the tests folder
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "PYTHONPATH": str(TESTS)}})
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


def _engine(model_dir: Path) -> EngineResource:
    # one torch thread everywhere: the driver and the actors then compute bit-identical logits
    return EngineResource(model=str(model_dir), device="cpu", batch_size=16, num_threads=1)


def _materialize(root: str, model_dir: Path, ray_cluster: RayResource | None, inst: DagsterInstance):
    inst.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, [PART])
    overrides = {"ray_cluster": ray_cluster} if ray_cluster is not None else {}
    return materialize(
        [AssetSpec("seed_problems", partitions_def=dataset_partitions), policy_rollouts, mc_step_labels],
        selection=[policy_rollouts.key, mc_step_labels.key], partition_key=PART, instance=inst,
        resources=build_resources(storage=StorageResource(root=root), policy_engine=_engine(model_dir),
                                  **overrides),
    )


def test_rollouts_and_mc_labels_over_two_actors_equal_one_process(tmp_path: Path, model_dir: Path) -> None:
    seed = world_seed_table(10)
    tables = {}
    for name, cluster in (("ray", RayResource(address="local", num_actors=2)), ("local", None)):
        root = f"file://{tmp_path / name}"
        Storage(root).write_dataset("seed_problems", seed, PART)
        inst = DagsterInstance.ephemeral()
        res = _materialize(root, model_dir, cluster, inst)
        assert res.success
        meta = res.asset_materializations_for_node("policy_rollouts")[0].metadata
        assert meta["executor"].value == name
        assert meta["shards_computed"].value == 3
        if name == "ray":
            assert meta["ray_actors"].value == 2 and meta["ray_actor_deaths"].value == 0
            # progress reaches the Dagster run as shards arrive from the actors
            logs = [e.user_message for e in inst.all_logs(res.run_id)]
            assert any("shard 3/3" in m and "tokens/s" in m and "ETA" in m for m in logs), logs
            mc_meta = res.asset_materializations_for_node("mc_step_labels")[0].metadata
            assert mc_meta["executor"].value == "ray" and mc_meta["shards_computed"].value == 5
        store = Storage(root)
        tables[name] = (store.read_dataset("policy_rollouts", PART), store.read_dataset("mc_step_labels", PART))
    for ray_table, local_table in zip(tables["ray"], tables["local"], strict=True):
        assert ray_table.num_rows == 20
        assert ray_table.equals(local_table)
    # the labels are real work, not empty shells
    assert sum(tables["ray"][1].column("completions").to_pylist()) > 0


def test_killed_actor_loses_only_its_shard_and_the_table_equals_one_process(tmp_path: Path,
                                                                             model_dir: Path) -> None:
    seed = world_seed_table(12)
    settings = stage_settings("policy_rollouts")
    cfg = _engine(model_dir).config()
    prompt = policy_prompt(cfg.model)  # the chat-templating prompt builder travels to every actor
    calls = tmp_path / "calls"
    calls.mkdir()
    executor = RayExecutor(connection=RayConnection(address="local"), num_actors=2, max_actor_restarts=1)
    distributed = generate_rollouts(Storage(f"file://{tmp_path / 'ray'}"), PART, seed, settings, cfg.identity(),
                                    partial(dies_once, cfg, tmp_path / "killed", calls), True,
                                    prompt=prompt, executor=executor)
    assert executor.deaths == 1 and (tmp_path / "killed").exists()
    shards = distributed.shards_total
    assert shards == 3 and distributed.shards_computed == 3
    # 3 shards, one computed twice (the one in flight when its actor died), no other repeated
    by_seed: dict[str, int] = {}
    for f in calls.iterdir():
        by_seed[f.name.split("-")[0]] = by_seed.get(f.name.split("-")[0], 0) + 1
    assert sorted(by_seed.values()) == [1, 1, 2]
    one = generate_rollouts(Storage(f"file://{tmp_path / 'local'}"), PART, seed, settings, cfg.identity(),
                            partial(make_engine, cfg), True, prompt=prompt)
    assert distributed.table.num_rows == 24
    assert distributed.table.equals(one.table)
    assert distributed.completion_tokens_computed == one.completion_tokens_computed > 0


def test_work_errors_fail_at_once_and_deaths_are_bounded(tmp_path: Path) -> None:
    def broken(chunk: list[int], index: int) -> pa.Table:
        raise ValueError(f"bad shard {index}")

    executor = RayExecutor(connection=RayConnection(address="local"), num_actors=2)
    with pytest.raises(ValueError, match="bad shard"):
        list(executor.map(broken, [(0, [1]), (1, [2])]))
    assert executor.deaths == 0

    def always_dies(chunk: list[int], index: int) -> pa.Table:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    executor = RayExecutor(connection=RayConnection(address="local"), num_actors=1, max_actor_restarts=1)
    with pytest.raises(RuntimeError, match="2 Ray actors died"):
        list(executor.map(always_dies, [(0, [1])]))


def test_without_an_address_shards_stay_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from prmforge.sharding import LocalExecutor

    assert isinstance(RayResource().executor(), LocalExecutor)
    monkeypatch.setenv("PRMFORGE_RAY_ADDRESS", "ray://prmforge-ray-head-svc:10001")
    monkeypatch.setenv("PRMFORGE_RAY_ACTORS", "8")
    monkeypatch.setenv("PRMFORGE_RAY_GPUS_PER_ACTOR", "1")
    executor = build_resources()["ray_cluster"].executor()
    assert isinstance(executor, RayExecutor)
    assert executor.describe() == {"executor": "ray", "ray_address": "ray://prmforge-ray-head-svc:10001",
                                   "ray_actors": 8, "ray_gpus_per_actor": 1.0, "ray_actor_deaths": 0}


def test_the_code_location_does_not_import_ray() -> None:
    """Ray stays optional: loading the definitions and running in-process never imports it."""
    import subprocess
    import sys

    code = ("import sys, pipelines.definitions as d; d.defs.resolve_all_asset_keys(); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=TESTS.parent)
    assert out.returncode == 0, out.stderr[-2000:]


def test_llm_judge_labels_over_ray_actors_equal_one_process(tmp_path: Path) -> None:
    """An LLM judge (openai backend, a real loopback server) judges its shards in Ray actors."""
    from test_labels_asset import PARTITION as JUDGE_PART
    from test_labels_asset import _write_inputs
    from test_llm_judge import _JudgeServer

    from prmforge.engines.factory import EngineConfig
    from prmforge.labeling.judges import LLMJudge
    from prmforge.labeling.stages import label_judge

    settings = stage_settings("judge_step_labels", shard_size=4)
    tables = {}
    with _JudgeServer() as server:
        judge = LLMJudge(EngineConfig(backend="openai", model="judge-model", base_url=server.base_url,
                                      max_retries=0, timeout_s=10))
        for name, executor in (("ray", RayExecutor(connection=RayConnection(address="local"), num_actors=2)),
                               ("local", None)):
            storage = Storage(f"file://{tmp_path / name}")
            _write_inputs(storage)
            run = label_judge(storage, JUDGE_PART, storage.read_dataset("policy_rollouts", JUDGE_PART),
                              storage.read_dataset("seed_problems", JUDGE_PART), settings, judge, executor=executor)
            assert run.sharded is not None and run.sharded.shards_computed == 3
            tables[name] = run.table
    assert tables["ray"].num_rows == 12 and tables["ray"].equals(tables["local"])
    assert set(tables["ray"].column("status").to_pylist()) == {"ok"}
    assert len(server.prompts) == 24  # every rollout judged once per run, none twice
