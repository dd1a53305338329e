"""policy_model + world_benchmark materialised for real (tiny profile) on a moto S3 root."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from dagster import AssetKey, DagsterInstance, materialize

from assets.policy import policy_model, world_benchmark
from prmforge.model_files import resolve_model_dir
from prmforge.policy.benchmark import WORLD_BENCHMARK, select_balanced
from prmforge.policy.sample import JudgedSample
from prmforge.storage import Storage
from prmforge.world import generate_problems, oracle_first_error, problem_from_meta
from resources import build_resources
from resources.storage import StorageResource

torch.set_num_threads(1)


def _meta(instance: DagsterInstance, asset: str) -> dict:
    ev = instance.get_latest_materialization_event(AssetKey(asset))
    return {k: v.value for k, v in ev.asset_materialization.metadata.items()}


def _checks(result) -> dict[str, bool]:
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


def test_policy_and_benchmark_materialise_then_reuse(s3_root):
    instance = DagsterInstance.ephemeral()
    resources = build_resources(storage=StorageResource(root=s3_root))
    cfg = {"ops": {"world_benchmark": {"config": {"min_per_class": 0}}}}
    first = materialize([policy_model, world_benchmark], resources=resources, instance=instance, run_config=cfg)
    assert first.success
    meta = _meta(instance, "policy_model")
    # not in this root yet: trained here, or copied from the session's policy cache (PRMFORGE_POLICY_CACHE)
    # recorded relative to the storage root, so a moved or re-mounted data home still finds it
    assert meta["reused"] is False and meta["uri"] == f"models/policy/{meta['config_hash']}"
    assert 0.0 <= meta["calib_accuracy"] <= 1.0 and "first wrong step" in meta["calib_first_error_histogram"]
    assert "calibration_in_band" in _checks(first)  # WARN check ran
    storage = Storage(s3_root)
    assert storage.dir_complete("models", "policy", meta["config_hash"])

    # the benchmark table: declared schema, oracle labels, disjoint from training problems
    table = storage.read_dataset("world_benchmark")
    assert table.schema.equals(WORLD_BENCHMARK)
    assert _checks(first)["benchmark_usable"] is True and _checks(first)["world_benchmark_contract"] is True
    for row in table.to_pylist():
        v = oracle_first_error(row["meta"], row["steps"])
        assert (v.first_error, v.kind) == (row["label"], row["error_kind"])
        assert problem_from_meta(__import__("json").loads(row["meta"])).problem == row["problem"]
    train_texts = {p.problem for p in generate_problems(200, 1000, "easy")}
    assert not train_texts & set(table.column("problem").to_pylist())

    # loadable from the stored URI in a fresh process, no custom code
    local = str(resolve_model_dir(storage.resolve(meta["uri"])))
    code = ("from transformers import AutoModelForCausalLM, AutoTokenizer;"
            f"AutoTokenizer.from_pretrained({local!r});"
            f"m = AutoModelForCausalLM.from_pretrained({local!r}); print(type(m).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "LlamaForCausalLM" in proc.stdout, proc.stderr[-1500:]

    # second materialisation reuses the model (same hash, no retraining), and reports the same calibration
    second = materialize([policy_model], resources=resources, instance=instance)
    assert second.success
    again = _meta(instance, "policy_model")
    assert again["reused"] is True and again["config_hash"] == meta["config_hash"]
    assert again["calib_accuracy"] == meta["calib_accuracy"]
    assert again["mlflow_run_id"] == meta["mlflow_run_id"]  # no duplicate MLflow run

    # changed calibration settings recalibrate the stored model without retraining it
    recal = materialize([policy_model], resources=resources, instance=instance,
                        run_config={"ops": {"policy_model": {"config": {"calib_problems": 5}}}})
    assert recal.success
    recal_meta = _meta(instance, "policy_model")
    assert recal_meta["reused"] is True and recal_meta["config_hash"] == meta["config_hash"]
    assert recal_meta["calib_problems"] == 5

    # a changed config trains a new model under a new hash (few steps: only the hash and the training path matter)
    third = materialize([policy_model], resources=resources, instance=instance,
                        run_config={"ops": {"policy_model": {"config": {"seed": 1, "train_steps": 20}}}})
    assert third.success
    changed = _meta(instance, "policy_model")
    assert changed["reused"] is False and changed["config_hash"] != meta["config_hash"]
    assert changed["from_policy_cache"] is False and changed["train_steps"] == 20


def test_benchmark_check_blocks_when_a_class_is_missing(local_root):
    instance = DagsterInstance.ephemeral()
    resources = build_resources(storage=StorageResource(root=local_root))
    cfg = {"ops": {"world_benchmark": {"config": {"min_per_class": 10_000}}}}
    result = materialize([policy_model, world_benchmark], resources=resources, instance=instance,
                         run_config=cfg, raise_on_error=False)
    assert _checks(result)["benchmark_usable"] is False


def _sample(problem, steps, answer_ok):
    v = oracle_first_error(problem, steps)
    return JudgedSample(problem, "\n".join(steps), steps, v.first_error, v.kind, v.detail,
                        problem.answer if answer_ok else None, answer_ok, "stop")


def test_select_balanced_keeps_right_answer_wrong_process():
    problems = generate_problems(6, 0, "easy", split="heldout")
    correct = [_sample(p, p.steps, True) for p in problems]
    wrong = [_sample(p, ["1 + 1 = 3."], False) for p in problems]
    # right final answer reached through a wrong step (logic at step 0, answer claim at the end)
    rawp = [_sample(p, [f"{p.meta['start']} + 999 = 1.", f"The answer is {p.answer}."], True) for p in problems[:2]]
    chosen = select_balanced(correct + correct + wrong + rawp, size=8, seed=0)
    assert sum(s.first_error == -1 for s in chosen) == 4
    assert sum(s.first_error >= 0 for s in chosen) == 4
    assert sum(s.first_error >= 0 and s.final_answer_correct for s in chosen) == 2
    assert len({(s.problem.problem_id, s.text) for s in chosen}) == len(chosen)


@pytest.mark.parametrize("n_correct", [0, 3])
def test_select_balanced_caps_at_smaller_class(n_correct):
    problems = generate_problems(5, 1, "easy", split="heldout")
    samples = [_sample(p, p.steps, True) for p in problems[:n_correct]]
    samples += [_sample(p, ["1 + 1 = 3."], False) for p in problems]
    chosen = select_balanced(samples, size=100, seed=0)
    assert len(chosen) == 2 * n_correct


def test_prm_base_model_is_the_policy_unless_the_profile_asks_for_more(local_root, monkeypatch):
    """Without ``prm_base_model`` entries the PRM's base LM is the policy's own folder (no extra training);
    with them (the world profile's case) it is a separately trained sibling under its own hash."""
    from assets.policy import prm_base_model
    from prmforge.profiles import PROFILES

    instance = DagsterInstance.ephemeral()
    resources = build_resources(storage=StorageResource(root=local_root))
    assert materialize([policy_model, prm_base_model], resources=resources, instance=instance).success
    policy, base = _meta(instance, "policy_model"), _meta(instance, "prm_base_model")
    assert base["uri"] == policy["uri"] and base["config_hash"] == policy["config_hash"]
    assert base["reused"] is True  # the policy folder, not a second training
    assert base["mlflow_run_id"] == policy["mlflow_run_id"]

    monkeypatch.setitem(PROFILES["tiny"], "prm_base_model", {"train_steps": 20, "seed": 3})
    assert materialize([prm_base_model], resources=resources, instance=instance).success
    sibling = _meta(instance, "prm_base_model")
    assert sibling["config_hash"] != policy["config_hash"] and sibling["reused"] is False
    assert sibling["train_steps"] == 20 and sibling["uri"].endswith(f"models/policy/{sibling['config_hash']}")
