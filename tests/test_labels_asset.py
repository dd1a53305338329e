"""Real materialisation of mc_step_labels, judge_step_labels and consensus_labels on a tiny partition."""

from __future__ import annotations

import pyarrow as pa
import pytest
from dagster import AssetSpec, DagsterInstance, materialize
from rollout_helpers import world_solution

from assets.labels import consensus_labels, judge_step_labels, mc_step_labels
from assets.partitions import dataset_partitions
from prmforge.schemas import SEED_PROBLEMS
from prmforge.storage import Storage
from prmforge.world import generate_problems, meta_json, oracle_first_error, prompt_for
from resources import build_resources
from resources.engine import EngineResource
from resources.storage import StorageResource

PARTITION = "world-tiny"
ROLLOUTS_SCHEMA = pa.schema([
    ("rollout_id", pa.string()), ("problem_id", pa.string()), ("dataset", pa.string()),
    ("sample_index", pa.int64()), ("prompt", pa.string()), ("steps", pa.list_(pa.string())),
    ("gold_answer", pa.string()), ("correct", pa.bool_()),
])


def _write_inputs(storage: Storage) -> dict[str, int]:
    """Seed problems and three rollouts per problem: correct, slip at step 0, stopped early."""
    problems = [p for p in generate_problems(40, seed=3) if len(p.meta["ops"]) >= 2
                and world_solution(p.meta, slip_at=0) is not None][:4]
    assert len(problems) == 4
    seed_rows, rollout_rows = [], []
    truth: dict[str, int] = {}
    for i, p in enumerate(problems):
        seed_rows.append({"problem_id": p.problem_id, "dataset": PARTITION, "problem": p.problem, "answer": p.answer,
                          "split": "train", "source_row": i, "meta": meta_json(p)})
        for j, (kind, steps) in enumerate([("gold", world_solution(p.meta)), ("slip", world_solution(p.meta, slip_at=0)),
                                           ("early", world_solution(p.meta, drop_last=True))]):
            assert steps is not None
            rid = f"{p.problem_id}-{j}"
            truth[rid] = oracle_first_error(p.meta, steps).first_error
            rollout_rows.append({"rollout_id": rid, "problem_id": p.problem_id, "dataset": PARTITION,
                                 "sample_index": j, "prompt": prompt_for(p.problem), "steps": steps,
                                 "gold_answer": p.answer, "correct": kind == "gold"})
    storage.write_dataset("seed_problems", pa.Table.from_pylist(seed_rows, schema=SEED_PROBLEMS), PARTITION,
                          schema=SEED_PROBLEMS)
    storage.write_dataset("policy_rollouts", pa.Table.from_pylist(rollout_rows, schema=ROLLOUTS_SCHEMA), PARTITION,
                          schema=ROLLOUTS_SCHEMA)
    return truth


def _materialize(instance: DagsterInstance, root: str, model: str, run_config: dict | None = None):
    resources = build_resources(storage=StorageResource(root=root),
                                policy_engine=EngineResource(model=model, device="cpu", batch_size=64))
    specs = [AssetSpec(k, partitions_def=dataset_partitions) for k in ("seed_problems", "policy_rollouts")]
    return materialize([*specs, mc_step_labels, judge_step_labels, consensus_labels], partition_key=PARTITION,
                       instance=instance, resources=resources, run_config=run_config)


def test_three_label_assets_materialise(local_root: str, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from prmforge.engines.tiny import build_tiny_qwen2

    model = str(build_tiny_qwen2(tmp_path / "tiny"))
    storage = Storage(local_root)
    truth = _write_inputs(storage)
    # the oracle agrees with how the rollouts were built
    assert sorted(set(truth.values()))[0] == -1 and list(truth.values()).count(0) == 4

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", [PARTITION])
    result = _materialize(instance, local_root, model)
    assert result.success

    mc = storage.read_dataset("mc_step_labels", PARTITION)
    judge = storage.read_dataset("judge_step_labels", PARTITION)
    cons = storage.read_dataset("consensus_labels", PARTITION)
    assert mc.num_rows == judge.num_rows == 12
    mc_rows = {r["rollout_id"]: r for r in mc.to_pylist()}
    for r in mc_rows.values():
        assert r["status"] == "ok" and r["mc_mode"] == "binary_search" and r["k"] == 2
        if r["final_correct"]:  # free fact: a correct rollout costs nothing in binary search
            assert r["first_error"] == -1 and r["completions"] == 0
        else:
            # a random tiny model never reaches the gold answer: every probed prefix has value 0
            assert r["first_error"] == 0 and all(not h for h in r["probe_hard"])
            assert r["completions"] == 2 * len(r["probe_steps"]) > 0 and r["generated_tokens"] > 0
        # soft labels: the probed values (K=2 each), the free last value, and the provenance of the labels
        n = len(r["steps"])
        assert len(r["step_values"]) == len(r["step_k"]) == len(r["step_advantages"]) == n
        assert r["step_values"][-1] == (1.0 if r["final_correct"] else 0.0)
        assert all(r["step_values"][s] == v and r["step_k"][s] == 2
                   for s, v in zip(r["probe_steps"], r["probe_soft"], strict=True))
        assert r["prefix_value"] == pytest.approx(1 / 3) and r["prefix_n"] == 3  # one of 3 rollouts is right
        assert (r["labeler"], r["seed"], r["engine"]) == ("mc_binary", 0, "hf")
        assert r["model"] == model and r["model_hash"].startswith("sha256:")
    judge_rows = {r["rollout_id"]: r for r in judge.to_pylist()}
    assert all(r["status"] == "ok" and r["judge"] == "calculator" and r["judge_identity"] == '{"judge": "calculator"}'
               for r in judge_rows.values())
    assert sorted(r["first_error"] for r in judge_rows.values()).count(0) == 4  # the slips

    # kept: gold (-1/-1) and slips (0/0); "stopped early" rollouts: MC 0, calculator -1 -> dropped
    kept = {r["rollout_id"]: r for r in cons.to_pylist()}
    assert set(kept) == {rid for rid in truth if rid.endswith(("-0", "-1"))}
    for rid, r in kept.items():
        assert r["first_error"] == truth[rid]
        assert len(r["labels"]) == len(r["steps"])
        assert r["labels"] == ([True] * len(r["steps"]) if r["first_error"] == -1 else [False])
        assert r["judge"] == "calculator" and r["mc_mode"] == "binary_search" and r["k"] == 2
        assert r["labeler"] == "consensus" and r["mc_labeler"] == "mc_binary" and r["judge_verdict"] == truth[rid]
        assert r["soft_labels"] == [v if v is not None else float(h) for v, h in zip(
            mc_rows[rid]["step_values"], r["labels"], strict=False)]

    mat = result.asset_materializations_for_node("consensus_labels")[0]
    md = {k: v.value for k, v in mat.metadata.items()}
    assert md["kept_share"] == pytest.approx(8 / 12, abs=1e-3)
    assert md["disagreements"]["judge_says_no_error"] == 4
    audit = md["audit"]
    assert audit["applicable"] and audit["consensus"]["exact"] == 1.0 and audit["kept_share"] == pytest.approx(8 / 12)
    assert audit["mc"]["n"] == 12 and audit["judge"]["n"] == 12
    # MC and the calculator each miss the stopped-early rollouts in a different way
    assert audit["consensus"]["exact"] >= audit["mc"]["exact"] and audit["consensus"]["exact"] >= audit["judge"]["exact"]
    assert md["audit_target_met"] is True

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"labels_match_steps", "no_label_after_first_negative", "ids_unique",
                           "traces_to_one_rollout", "kept_share_in_bounds", "mc_contract", "judge_contract",
                           "consensus_contract", "trl_contract", "trl_soft_contract", "openrlhf_contract"}
    assert all(c.passed for c in checks.values()), {k: c.metadata for k, c in checks.items() if not c.passed}
    assert checks["mc_contract"].metadata["rows"].value == 12

    # TRL export beside the dataset, loadable with `datasets`
    datasets = pytest.importorskip("datasets")
    assert md["trl_export"] == "datasets/consensus_labels_trl/world-tiny/data.parquet"
    url = storage.resolve(md["trl_export"])
    ds = datasets.load_dataset("parquet", data_files=url.removeprefix("file://"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 8 and {"prompt", "completions", "labels", "labeler", "model_hash"} <= set(ds.column_names)
    # the soft TRL and OpenRLHF exports beside it, one row per kept rollout
    assert md["trl_soft_export"] == "datasets/consensus_labels_trl_soft/world-tiny/data.parquet"
    soft = storage.read_dataset("consensus_labels_trl_soft", PARTITION)
    orl = storage.read_dataset("consensus_labels_openrlhf", PARTITION)
    assert soft.num_rows == orl.num_rows == 8 and md["openrlhf_export"].endswith("openrlhf/world-tiny/data.parquet")
    assert sorted(map(tuple, soft.column("labels").to_pylist())) == sorted(
        tuple(r["soft_labels"]) for r in kept.values())

    # MLflow run with the audit figures
    mlflow_md = result.asset_materializations_for_node("consensus_labels")[0].metadata
    run_id = mlflow_md["mlflow_run_id"].value
    from resources.mlflow import MLflowResource

    run = MLflowResource().client().get_run(run_id)
    assert run.data.metrics["kept_share"] == pytest.approx(8 / 12)
    assert run.data.metrics["audit_consensus_exact"] == 1.0

    # rerun: every MC shard is reused, the labels are identical
    again = _materialize(instance, local_root, model)
    mc_md = {k: v.value for k, v in again.asset_materializations_for_node("mc_step_labels")[0].metadata.items()}
    assert mc_md["shards_reused"] == mc_md["shards_total"] == 3 and mc_md["shards_computed"] == 0
    assert storage.read_dataset("mc_step_labels", PARTITION).equals(mc)


@pytest.mark.parametrize("root_fixture", ["local_root", "s3_root"])
def test_blocking_checks_fail_on_untraceable_rows(root_fixture: str, request: pytest.FixtureRequest) -> None:
    """A consensus row whose rollout is gone upstream fails traces_to_one_rollout (blocking); local and S3."""
    from prmforge.labeling.stages import JUDGE_SCHEMA, MC_SCHEMA

    local_root = request.getfixturevalue(root_fixture)
    storage = Storage(local_root)
    truth = _write_inputs(storage)
    rollouts = storage.read_dataset("policy_rollouts", PARTITION).to_pylist()
    mc_rows, judge_rows = [], []
    for r in rollouts:
        fe = truth[r["rollout_id"]]
        mc_rows.append({**{k: r[k] for k in ("rollout_id", "problem_id", "dataset", "prompt", "steps", "gold_answer")},
                        "final_correct": r["correct"], "mc_mode": "per_step", "k": 4, "status": "ok",
                        "first_error": fe, "labels": [True] * len(r["steps"]) if fe < 0 else [True] * fe + [False],
                        "probe_steps": [], "probe_soft": [], "probe_hard": [], "probe_k": [], "completions": 0,
                        "generated_tokens": 0, "prompt_tokens": 0, "rounds": 0, "free_positive": 0, "shared_probes": 0, "detail": None,
                        "labeler": "mc_per_step", "seed": 0, "engine": "hf", "model": "m", "model_hash": None,
                        "step_values": [None] * len(r["steps"]), "step_k": [0] * len(r["steps"]),
                        "prefix_value": None, "prefix_n": 0, "step_advantages": [None] * len(r["steps"])})
        judge_rows.append({"rollout_id": r["rollout_id"], "problem_id": r["problem_id"], "dataset": PARTITION,
                           "judge": "calculator", "status": "ok", "first_error": fe, "detail": None,
                           "raw_output": None, "prompt_tokens": 0, "completion_tokens": 0,
                           "judge_identity": '{"judge": "calculator"}'})
    storage.write_dataset("mc_step_labels", pa.Table.from_pylist(mc_rows, schema=MC_SCHEMA), PARTITION)
    storage.write_dataset("judge_step_labels", pa.Table.from_pylist(judge_rows, schema=JUDGE_SCHEMA), PARTITION)
    # the first rollout disappears upstream, another is duplicated
    rest = rollouts[1:] + rollouts[1:2]
    storage.write_dataset("policy_rollouts", pa.Table.from_pylist(rest, schema=ROLLOUTS_SCHEMA), PARTITION,
                          schema=ROLLOUTS_SCHEMA)

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", [PARTITION])
    specs = [AssetSpec(k, partitions_def=dataset_partitions)
             for k in ("seed_problems", "policy_rollouts", "mc_step_labels", "judge_step_labels")]
    result = materialize([*specs, consensus_labels], partition_key=PARTITION, instance=instance,
                         resources=build_resources(storage=StorageResource(root=local_root)), raise_on_error=False)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    bad = checks["traces_to_one_rollout"]
    assert not bad.passed and bad.severity.value == "ERROR"
    assert set(bad.metadata["examples"].value) == {rollouts[0]["rollout_id"], rollouts[1]["rollout_id"]}
    assert checks["labels_match_steps"].passed and checks["ids_unique"].passed
    # all rollouts agree (MC == judge == oracle here): nothing filtered, so the WARN check fires
    kept = checks["kept_share_in_bounds"]
    assert not kept.passed and kept.severity.value == "WARN"
    # the TRL export sits beside the dataset under the same root
    md = {k: v.value for k, v in result.asset_materializations_for_node("consensus_labels")[0].metadata.items()}
    assert storage.resolve(md["trl_export"]) == storage.url("datasets", "consensus_labels_trl", PARTITION,
                                                            "data.parquet")
    assert storage.exists(storage.path("datasets", "consensus_labels_trl", PARTITION, "data.parquet"))


def test_llm_judge_asset_over_loopback_server(local_root: str) -> None:
    """judge_step_labels with kind=llm through the openai backend; a rollout without its problem is an error row."""
    from test_llm_judge import _JudgeServer

    from resources.judge import JudgeResource

    storage = Storage(local_root)
    truth = _write_inputs(storage)
    seed = storage.read_dataset("seed_problems", PARTITION)
    dropped = seed.column("problem_id")[0].as_py()
    storage.write_dataset("seed_problems", seed.slice(1), PARTITION, schema=SEED_PROBLEMS)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", [PARTITION])
    specs = [AssetSpec(k, partitions_def=dataset_partitions) for k in ("seed_problems", "policy_rollouts")]
    with _JudgeServer() as server:
        judge = JudgeResource(kind="llm", backend="openai", model="judge-model", base_url=server.base_url,
                              max_retries=0, timeout_s=10)
        result = materialize([*specs, judge_step_labels], partition_key=PARTITION, instance=instance,
                             resources=build_resources(storage=StorageResource(root=local_root), judge=judge))
    assert result.success
    rows = {r["rollout_id"]: r for r in storage.read_dataset("judge_step_labels", PARTITION).to_pylist()}
    assert len(rows) == 12 and len(server.prompts) == 9
    for rid, r in rows.items():
        assert r["judge"] == "llm:openai:judge-model"
        if r["problem_id"] == dropped:
            assert r["status"] == "error" and r["first_error"] is None and "seed_problems" in r["detail"]
        else:
            assert r["status"] == "ok" and "\\boxed" in r["raw_output"]
            # the served judge checks arithmetic: it finds the slips, not the early stops
            assert r["first_error"] == (0 if truth[rid] == 0 else -1)
    md = {k: v.value for k, v in result.asset_materializations_for_node("judge_step_labels")[0].metadata.items()}
    assert md["status_counts"] == {"ok": 9, "error": 3} and md["shards_computed"] == 3


def _mc_run_with(local_root: str, tmp_path, config: dict) -> tuple:
    """mc_step_labels materialised with ``config`` on a random tiny Qwen2: (result, rows by rollout id)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from prmforge.engines.tiny import build_tiny_qwen2

    model = str(build_tiny_qwen2(tmp_path / "tiny"))
    storage = Storage(local_root)
    _write_inputs(storage)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", [PARTITION])
    result = _materialize(instance, local_root, model, {"ops": {"mc_step_labels": {"config": config}}})
    assert result.success
    return result, {r["rollout_id"]: r for r in storage.read_dataset("mc_step_labels", PARTITION).to_pylist()}


def test_mc_asset_with_reuse_and_adaptive_sampling(local_root: str, tmp_path) -> None:
    """mc_step_labels with reuse and adaptive on (run config): a rollout whose steps a correct sibling wrote
    is labelled without sampling, the others are sampled in waves up to k, and the rows say the strategy."""
    result, rows = _mc_run_with(local_root, tmp_path, {"reuse": True, "adaptive": True, "k": 4, "first_wave": 1})
    assert len(rows) == 12
    for rid, r in rows.items():
        assert r["status"] == "ok" and r["mc_mode"] == "binary_search+reuse+adaptive" and r["k"] == 4
        kind = int(rid.rsplit("-", 1)[1])
        if kind == 0:  # the gold solution: correct, free
            assert r["first_error"] == -1 and r["completions"] == 0
        elif kind == 1:  # slip at step 0: nothing shared with the gold rollout; a random model never
            # reaches the answer, so each probe draws all k samples (waves 1, 2, 1) and finds 0
            assert r["first_error"] == 0 and r["completions"] == 4 * len(r["probe_steps"]) > 0
        else:  # stopped early: every step is a prefix of the correct gold rollout, so all but the known-wrong
            # last one are proven positive without a single sample
            assert r["first_error"] == len(r["steps"]) - 1 and r["completions"] == 0 and r["probe_steps"] == []
            assert r["free_positive"] == len(r["steps"]) - 1  # the counter says what reuse saved
        if kind == 1:
            assert r["free_positive"] == 0
    md = {k: v.value for k, v in result.asset_materializations_for_node("mc_step_labels")[0].metadata.items()}
    assert md["mode"] == "binary_search+reuse+adaptive"
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert md["free_positive_per_labelled_rollout"] > 0
    assert md["free_positive_per_labelled_rollout"] == pytest.approx(
        sum(r["free_positive"] for r in ok) / len(ok), abs=1e-4)
    assert md["shared_probes_per_labelled_rollout"] == pytest.approx(
        sum(r["shared_probes"] for r in ok) / len(ok), abs=1e-4)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["mc_contract"].passed


def test_mc_asset_with_verify_gives_per_steps_first_error(local_root: str, tmp_path) -> None:
    """mc_step_labels with verify (plus reuse and adaptive): per_step's verdict, not binary search's. A random
    tiny model never reaches the answer, so per_step's first error is 0 on every rollout, the correct gold
    one included; binary search would call the gold rollout -1 and reuse would prove the stopped-early
    rollouts positive up to their last step. Verify does neither: no proof labels a prefix."""
    result, rows = _mc_run_with(local_root, tmp_path,
                                {"verify": True, "reuse": True, "adaptive": True, "k": 4, "first_wave": 1})
    assert len(rows) == 12
    for r in rows.values():
        assert r["status"] == "ok" and r["mc_mode"] == "binary_search+verify+reuse+adaptive"
        assert r["first_error"] == 0 and r["labels"] == [False] and r["free_positive"] == 0
        if len(r["steps"]) > 1:  # the first prefix was observed at 0 (by this rollout or a sibling sharing it)
            assert 0 in r["probe_steps"] and not r["probe_hard"][r["probe_steps"].index(0)]
    assert sum(r["shared_probes"] for r in rows.values()) > 0  # gold and early rollouts share their first prefix
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["mc_contract"].passed
