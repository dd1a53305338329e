"""Real Dagster materialisations of ``policy_rollouts`` on the tiny profile."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch
from dagster import AssetSpec, DagsterInstance, MaterializeResult, asset, materialize
from rollout_helpers import tiny_policy, world_seed_table

from assets.partitions import DATASETS_PARTITIONS_NAME, dataset_partitions
from assets.rollouts import policy_rollouts
from prmforge.rollouts import ROLLOUT_SCHEMA
from prmforge.storage import Storage
from resources import build_resources
from resources.engine import EngineResource
from resources.storage import StorageResource

torch.set_num_threads(1)
PART = "world-demo"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


def _instance() -> DagsterInstance:
    inst = DagsterInstance.ephemeral()
    inst.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, [PART])
    return inst


def _run(root: str, instance: DagsterInstance, engine: EngineResource, extra_assets=(), run_config=None):
    seed_spec = AssetSpec("seed_problems", partitions_def=dataset_partitions)
    return materialize(
        [seed_spec, *extra_assets, policy_rollouts],
        selection=[policy_rollouts.key, *[a.key for a in extra_assets]],
        partition_key=PART,
        instance=instance,
        resources=build_resources(storage=StorageResource(root=root), policy_engine=engine),
        run_config=run_config,
        raise_on_error=False,
    )


def test_materialise_with_explicit_model(local_root: str, model_dir: Path) -> None:
    store = Storage(local_root)
    seed = world_seed_table(10)
    store.write_dataset("seed_problems", seed, PART)
    instance = _instance()
    res = _run(local_root, instance, EngineResource(model=str(model_dir), device="cpu", batch_size=16))
    assert res.success
    table = store.read_dataset("policy_rollouts", PART)
    assert table.schema.equals(ROLLOUT_SCHEMA)
    # tiny profile: n=2, 10 problems (max_problems 12), shards of 4 problems
    assert table.num_rows == 20
    assert sorted(set(table.column("problem_id").to_pylist())) == sorted(seed.column("problem_id").to_pylist())
    rows = table.to_pylist()
    for r in rows:
        assert r["rollout_id"] == f"{r['problem_id']}#{r['sample_index']}"
        assert r["prompt"].startswith(seed.column("problem").to_pylist()[0][:0])
    mats = res.asset_materializations_for_node("policy_rollouts")
    meta = mats[0].metadata
    assert meta["shards_total"].value == 3 and meta["shards_computed"].value == 3
    assert meta["rollouts"].value == 20
    assert 0.0 <= meta["accuracy"].value <= meta["pass_at_n"].value <= 1.0
    checks = {e.check_name: e for e in res.get_asset_check_evaluations()}
    assert set(checks) == {"n_per_problem", "steps_non_empty", "truncation_rate", "rollouts_contract"}
    assert checks["n_per_problem"].passed
    errors = sum(r["finish_reason"] == "error" for r in rows) / len(rows)
    assert checks["rollouts_contract"].passed == (errors <= 0.05), checks["rollouts_contract"].metadata
    # an empty answer (the model ended its turn at once) is counted apart; text without steps fails the check
    empty = sum(1 for r in rows if not r["steps"] and not (r["finish_reason"] == "stop" and not r["text"].strip()))
    assert checks["steps_non_empty"].passed == (empty == 0)
    trunc = sum(r["truncated"] for r in rows) / len(rows)
    assert checks["truncation_rate"].passed == (trunc <= 0.2)

    # a second materialisation reuses every shard and yields the same table
    res2 = _run(local_root, instance, EngineResource(model=str(model_dir), device="cpu", batch_size=16))
    meta2 = res2.asset_materializations_for_node("policy_rollouts")[0].metadata
    assert meta2["shards_reused"].value == 3 and meta2["shards_computed"].value == 0
    assert store.read_dataset("policy_rollouts", PART).equals(table)


def test_bootstrap_policy_resolved_from_policy_model(s3_root: str, model_dir: Path) -> None:
    """Empty engine model = the latest policy_model materialisation's uri (here on S3)."""
    store = Storage(s3_root)
    store.write_dataset("seed_problems", world_seed_table(5), PART)
    uri = store.put_dir(model_dir, "models", "policy", "v1")

    @asset(name="policy_model")
    def fake_policy_model() -> MaterializeResult:
        return MaterializeResult(metadata={"uri": uri})

    instance = _instance()
    res = _run(s3_root, instance, EngineResource(device="cpu"), extra_assets=[fake_policy_model],
               run_config={"ops": {"policy_rollouts": {"config": {"n": 3, "max_tokens": 12}}}})
    assert res.success
    table = store.read_dataset("policy_rollouts", PART)
    assert table.num_rows == 15
    assert set(table.column("sample_index").to_pylist()) == {0, 1, 2}
    assert max(table.column("completion_tokens").to_pylist()) <= 12
    # the bootstrap policy gets the world's prompt, in its tokenizer's chat template (the tiny stand-in has ChatML)
    assert all(p.startswith("<|im_start|>system\n") and "<|im_start|>user\nProblem: " in p
               and p.endswith("Solution:\n<|im_end|>\n<|im_start|>assistant\n")
               for p in table.column("prompt").to_pylist())
    meta = res.asset_materializations_for_node("policy_rollouts")[0].metadata
    assert meta["model"].value == uri


@pytest.mark.slow
def test_embedded_default_end_to_end(local_root: str) -> None:
    """Default resources: real seed_problems (world), real bootstrap policy_model, hf engine."""
    from assets.policy import policy_model
    from assets.seed import seed_problems

    instance = _instance()
    resources = build_resources(storage=StorageResource(root=local_root))
    assert isinstance(resources["policy_engine"], EngineResource) and resources["policy_engine"].model == ""
    assert materialize([policy_model], instance=instance, resources=resources).success
    res = materialize([seed_problems, policy_rollouts], partition_key=PART, instance=instance,
                      resources=resources)
    assert res.success
    store = Storage(local_root)
    seed = store.read_dataset("seed_problems", PART)
    table = store.read_dataset("policy_rollouts", PART)
    assert table.num_rows == 2 * min(12, seed.num_rows)
    meta = res.asset_materializations_for_node("policy_rollouts")[0].metadata
    assert meta["backend"].value == "hf" and meta["model"].value.startswith("file://")
    rows = table.to_pylist()
    assert all(r["prompt"].startswith("Problem: ") and r["prompt"].endswith("Solution:\n") for r in rows)
    # the policy writes the world's format: its steps split on the world's separator
    assert sum(len(r["steps"]) for r in rows) > len(rows)
    # (the tiny profile's 12-step policy rarely finishes; grading is still applied to every row)
    from prmforge.answers import grade

    assert all((r["extracted_answer"], r["correct"]) == grade(r["text"], r["gold_answer"]) for r in rows)


def test_empty_answers_are_counted_apart_from_rollouts_without_steps() -> None:
    """A chat policy may end its turn at once on a prompt far from its training: counted, not blocking."""
    from prmforge.engines.base import Completion
    from prmforge.rollouts import RolloutRun, RolloutSettings, rollout_checks, rollout_rows, summarize

    seed = world_seed_table(2)
    problems = seed.to_pylist()
    ok = Completion("Mia buys 3 more: 5 + 3 = 8. The answer is 8.", 5, 12, "stop")
    answer_rows = rollout_rows(problems[0], "p", [ok, Completion("", 5, 1, "stop")], "\n")
    garbled_rows = rollout_rows(problems[1], "p", [ok, Completion("   ", 5, 40, "length")], "\n")
    settings = RolloutSettings(n=2)
    for rows, passed, answers, empty in ((answer_rows + rollout_rows(problems[1], "p", [ok, ok], "\n"), True, 1, 0),
                                         (answer_rows + garbled_rows, False, 1, 1)):
        table = pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA)
        st = summarize(table, 2)
        assert (st["empty_answers"], st["empty_steps"], st["usable_rollouts"]) == (answers, empty, 4 - answers - empty)
        run = RolloutRun(table, "k", 1, 0, 1, 0.0, 0, 0.0, st)
        check = {c.name: c for c in rollout_checks(run, seed, settings)}["steps_non_empty"]
        assert check.passed is passed and check.metadata["empty_answers"] == answers
