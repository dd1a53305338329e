"""policy_rollouts, mc_step_labels and judge_step_labels materialised through the vllm engine.

Real Dagster materialisations, real vLLM (its CPU build here), the tiny
profile on a tiny partition: the policy engine samples rollouts and Monte-Carlo
continuations (prefix caching on), and an LLM judge on vLLM judges the
rollouts. A second materialisation of ``policy_rollouts`` into a fresh store
(new engine, new worker processes) must reproduce the table exactly: that is
what makes shards resumable. Nothing skips: without vLLM these tests fail.
Four engine starts (30-90 s each on CPU) make this the slowest vLLM test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetSpec, DagsterInstance, materialize
from rollout_helpers import tiny_policy, world_seed_table

from assets.labels import judge_step_labels, mc_step_labels
from assets.partitions import DATASETS_PARTITIONS_NAME, dataset_partitions
from assets.rollouts import policy_rollouts
from prmforge.storage import Storage
from resources import build_resources
from resources.engine import EngineResource
from resources.judge import JudgeResource
from resources.storage import StorageResource

pytestmark = pytest.mark.vllm  # starts a vLLM engine: one at a time under `make test` (tests/conftest.py)

PART = "world-demo"
# eager (no compile step at start), small KV cache: each engine starts in 30-90 s on CPU; the model's
# whole context, as an LLM-judge prompt takes about 1,200 tokens with the tiny tokenizer
VLLM = {"backend": "vllm", "enforce_eager": True, "max_model_len": 2048, "cpu_kv_cache_gib": 0.5,
        "gpu_memory_utilization": 0.3}
# a random model's verdicts are mostly unparsed: the judge contract's unusable-share guard would block
RUN_CONFIG = {"ops": {"judge_step_labels": {"config": {"max_unusable_share": 1.0}}}}
ROLLOUT_COLUMNS = ["rollout_id", "text", "steps", "completion_tokens", "finish_reason"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


def _materialize(root: str, model: Path, assets: list, judge: JudgeResource | None = None):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, [PART])
    specs = [AssetSpec("seed_problems", partitions_def=dataset_partitions)]
    resources = build_resources(storage=StorageResource(root=root),
                                policy_engine=EngineResource(model=str(model), **VLLM),
                                **({"judge": judge} if judge else {}))
    run_config = RUN_CONFIG if judge_step_labels in assets else None
    return materialize([*specs, *assets], partition_key=PART, instance=instance, resources=resources,
                       run_config=run_config, raise_on_error=False)


def test_rollouts_mc_and_llm_judge_through_vllm(model_dir: Path, tmp_path: Path) -> None:
    seed = world_seed_table(8, dataset=PART)
    roots = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        roots.append((tmp_path / name).as_uri())
        Storage(roots[-1]).write_dataset("seed_problems", seed, PART)

    judge = JudgeResource(kind="llm", model=str(model_dir), **VLLM)
    res = _materialize(roots[0], model_dir, [policy_rollouts, mc_step_labels, judge_step_labels], judge)
    assert res.success, [e.message for e in res.all_events if e.is_failure]
    store = Storage(roots[0])
    rollouts = store.read_dataset("policy_rollouts", PART)
    assert rollouts.num_rows == 16  # 8 problems x n=2 (tiny profile)
    rows = rollouts.to_pylist()
    assert all(r["finish_reason"] in {"stop", "length"} and r["completion_tokens"] > 0 for r in rows)
    meta = res.asset_materializations_for_node("policy_rollouts")[0].metadata
    assert meta["backend"].value == "vllm" and meta["shards_computed"].value == 2

    mc = store.read_dataset("mc_step_labels", PART).to_pylist()
    assert sorted(r["rollout_id"] for r in mc) == sorted(r["rollout_id"] for r in rows)
    probed = [r for r in mc if r["completions"] > 0]
    assert probed, "no rollout needed Monte-Carlo continuations"
    assert all(r["status"] == "ok" and r["k"] == 2 and r["generated_tokens"] > 0 for r in probed)

    judged = store.read_dataset("judge_step_labels", PART).to_pylist()
    assert sorted(r["rollout_id"] for r in judged) == sorted(r["rollout_id"] for r in rows)
    assert {r["judge"] for r in judged} == {f"llm:vllm:{model_dir}"}
    # the LLM answered every rollout (EOS counts as a token); a random model's verdicts are mostly unparsed
    bad = [(r["status"], r["completion_tokens"], r["detail"]) for r in judged
           if r["completion_tokens"] == 0 or r["status"] not in {"ok", "unparsed", "abstain"}]
    assert not bad, bad

    # a new engine in new processes, same seed: the same rollouts
    again = _materialize(roots[1], model_dir, [policy_rollouts])
    assert again.success
    table_b = Storage(roots[1]).read_dataset("policy_rollouts", PART)
    assert table_b.select(ROLLOUT_COLUMNS).to_pylist() == rollouts.select(ROLLOUT_COLUMNS).to_pylist()
