"""Real Dagster materialisation of prm_model, prm_evaluation and registered_prm (tiny profile).

Upstream assets are tiny stand-ins with the real contracts (keys, partitions, schemas,
``uri`` metadata), so this test does not depend on the policy/labelling stages' speed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from dagster import AssetKey, DagsterInstance, MaterializeResult, asset, materialize
from prm_helpers import CORPUS, world_rows

from assets.partitions import dataset_partitions
from assets.prm import prm_evaluation, prm_model, registered_prm
from prmforge.labeling.consensus import CONSENSUS_SCHEMA
from prmforge.storage import Storage
from resources import build_resources
from resources.storage import StorageResource

torch.set_num_threads(1)

LABELS_A, BENCH = world_rows(24, seed=1, dataset="world-a")
LABELS_B, _ = world_rows(12, seed=2, dataset="world-b")
_, BENCH = world_rows(16, seed=3, split="heldout")


def _stub_backbone(storage: StorageResource) -> str:
    from prmforge.prm.tiny import build_tiny_backbone
    from prmforge.world import generate_problems

    texts = CORPUS + [p.problem + "\n" + "\n".join(p.steps) for p in generate_problems(30, 0, "easy")]
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_backbone(Path(tmp) / "m", texts, hidden_size=32, layers=1, vocab_size=400)
        return storage.get().put_dir(Path(tmp) / "m", "models", "policy", "stub")


@asset(name="policy_model")
def policy_stub(storage: StorageResource) -> MaterializeResult:
    return MaterializeResult(metadata={"uri": _stub_backbone(storage)})


@asset(name="prm_base_model")
def prm_base_stub(storage: StorageResource) -> MaterializeResult:
    """As in the tiny and demo profiles: the PRM starts from the policy itself."""
    return MaterializeResult(metadata={"uri": _stub_backbone(storage)})


@asset(name="world_benchmark")
def bench_stub() -> pa.Table:
    return pa.Table.from_pylist(BENCH)


@asset(name="consensus_labels", partitions_def=dataset_partitions)
def labels_stub(context) -> pa.Table:
    rows = LABELS_A if context.partition_key == "world-a" else LABELS_B
    return pa.Table.from_pylist(rows, schema=CONSENSUS_SCHEMA)


ALL = [policy_stub, prm_base_stub, bench_stub, labels_stub, prm_model, prm_evaluation, registered_prm]


@pytest.mark.slow
def test_prm_assets_materialise(local_root: str, tmp_path: Path) -> None:
    import mlflow

    from prmforge.prm.model import ProcessRewardModel, score_steps

    resources = build_resources(storage=StorageResource(root=local_root))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", ["world-a", "world-b"])
    for key in ("world-a", "world-b"):
        assert materialize(ALL, selection=[labels_stub], partition_key=key, instance=instance,
                           resources=resources).success
    res = materialize(ALL, selection=[policy_stub, prm_base_stub, bench_stub, prm_model, prm_evaluation, registered_prm],
                      instance=instance, resources=resources)
    assert res.success

    def meta(name: str) -> dict:
        ev = instance.get_latest_materialization_event(AssetKey(name))
        return {k: v.value for k, v in ev.asset_materialization.metadata.items()}

    m = meta("prm_model")
    assert m["rows"] == len(LABELS_A) + len(LABELS_B)  # both partitions concatenated
    assert str(m["uri"]).startswith("models/prm/")  # relative to the storage root: the home can move
    assert not str(m["base_model"]).startswith(("/", "file:"))
    model, tok = ProcessRewardModel.load(Storage(local_root).resolve(str(m["uri"])))
    assert len(score_steps(model, tok, [("Tom has 3 apples.", ["3 + 4 = 7"])])[0]) == 1

    e = meta("prm_evaluation")
    assert 0.0 <= e["world_f1"] <= 1.0 and "| world |" in e["summary"]
    assert e["steps_unscored"] == 0 and e["steps_total"] > 0 and e["world_n_error"] > 0
    checks = {c.check_name: c for c in res.get_asset_check_evaluations()}
    assert checks["steps_scored"].passed
    assert {"bon2_prm_min", "bon2_majority", "bon2_pass_at_n", "min_on_last_step_share", "rawp_flagged",
            "random_scorer_world_f1", "beats_random_scorer"} <= set(e)
    r = meta("registered_prm")
    assert r["version"] == "1" and r["promoted"] is True and "champion" in r["aliases"]

    # MLflow holds the training curve, the plots and the lineage.
    client = mlflow.MlflowClient(resources["mlflow"].tracking_uri)
    hist = client.get_metric_history(m["mlflow_run_id"], "loss")
    assert len(hist) == m["train_steps"] and client.get_metric_history(m["mlflow_run_id"], "tokens_per_s")
    plots = {f.path for f in client.list_artifacts(e["mlflow_run_id"], "plots")}
    assert plots == {"plots/calibration.png", "plots/bon_vs_n.png"}
    mv = client.get_model_version("prmforge-prm", "1")
    assert "data_versions.consensus_labels" in mv.tags and "git_commit" in mv.tags

    # Steps that do not fit the scoring context fail the blocking check: no registration from it.
    short = materialize(ALL, selection=[prm_evaluation, registered_prm], instance=instance, resources=resources,
                        run_config={"ops": {"prm_evaluation": {"config": {"max_length": 24}}}}, raise_on_error=False)
    assert not short.success
    failed = {c.check_name: c for c in short.get_asset_check_evaluations()}["steps_scored"]
    assert not failed.passed and failed.metadata["unscored_share"].value > 0.01
    assert meta("registered_prm")["version"] == "1"

    # A challenger that must beat the champion by an impossible margin is refused.
    again = materialize(ALL, selection=[registered_prm], instance=instance, resources=resources,
                        run_config={"ops": {"registered_prm": {"config": {"gate_margin": 2.0}}}})
    assert again.success
    r2 = meta("registered_prm")
    assert r2["version"] == "2" and r2["promoted"] is False and r2["aliases"] == "challenger"
    assert str(client.get_model_version_by_alias("prmforge-prm", "champion").version) == "1"


@pytest.mark.slow
def test_prm_model_launches_two_ddp_workers_equal_to_one_process(local_root: str) -> None:
    """``num_workers: 2`` makes the asset run torchrun (2 gloo ranks on CPU); with the same global batch it
    trains the same weights as one process, and the per-step curve still reaches MLflow."""
    import mlflow

    from prmforge.prm.model import ProcessRewardModel

    resources = build_resources(storage=StorageResource(root=local_root))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", ["world-a"])
    assert materialize(ALL, selection=[labels_stub], partition_key="world-a", instance=instance,
                       resources=resources).success
    assert materialize(ALL, selection=[policy_stub, prm_base_stub], instance=instance, resources=resources).success
    common = {"max_steps": 3, "lr": 3e-3, "checkpoint_every": 100, "datasets": ["world-a"]}
    models, metas = [], []
    for workers, micro in ((2, 4), (1, 8)):  # same global batch: 2 x 4 = 1 x 8
        res = materialize(ALL, selection=[prm_model], instance=instance,
                          resources=resources, run_config={"ops": {"prm_model": {"config": {
                              **common, "num_workers": workers, "micro_batch_size": micro}}}})
        assert res.success
        meta = {k: v.value for k, v in res.asset_materializations_for_node("prm_model")[0].metadata.items()}
        assert meta["num_workers"] == workers and meta["train_steps"] == 3
        metas.append(meta)
        models.append(ProcessRewardModel.load(Storage(local_root).resolve(str(meta["uri"])))[0])
    # Two gloo ranks sum the gradient in another order than one process; Adam divides by sqrt(v) + eps, so
    # near-zero gradients carry that rounding into the update (measured: 1.03e-5 on head.2.weight, whose
    # entries reach 0.055; every other tensor <= 1.2e-7).
    for (k, a), (_, b) in zip(models[0].state_dict().items(), models[1].state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=5e-5), k
    assert metas[0]["encode_stats"] == metas[1]["encode_stats"]
    client = mlflow.MlflowClient(resources["mlflow"].tracking_uri)
    assert [m.step for m in client.get_metric_history(metas[0]["mlflow_run_id"], "loss")] == [1, 2, 3]


@pytest.mark.slow
def test_prm_model_trains_and_evaluates_on_soft_labels(local_root: str) -> None:
    """``label_kind: soft``: prm_model trains with BCE against the per-step MC values (loss falls), and
    prm_evaluation scores the result like any PRM; a hard run on the same rows trains to other weights."""
    import mlflow

    resources = build_resources(storage=StorageResource(root=local_root))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", ["world-a"])
    assert materialize(ALL, selection=[labels_stub], partition_key="world-a", instance=instance,
                       resources=resources).success
    soft = {"label_kind": "soft", "datasets": ["world-a"], "lr": 3e-3, "checkpoint_every": 100, "epochs": 4.0}
    res = materialize(ALL, selection=[policy_stub, prm_base_stub, bench_stub, prm_model, prm_evaluation],
                      instance=instance, resources=resources,
                      run_config={"ops": {"prm_model": {"config": soft}}})
    assert res.success
    checks = {c.check_name: c for c in res.get_asset_check_evaluations()}
    assert checks["training_sane"].passed and checks["steps_scored"].passed
    assert checks["loss_decreased"].passed, checks["loss_decreased"].metadata
    m = {k: v.value for k, v in res.asset_materializations_for_node("prm_model")[0].metadata.items()}
    assert m["settings"]["label_kind"] == "soft" and m["rows"] == len(LABELS_A)
    assert m["encode_stats"]["examples_kept"] > 0 and "rejected_bad_label_value" not in m["encode_stats"]
    e = {k: v.value for k, v in res.asset_materializations_for_node("prm_evaluation")[0].metadata.items()}
    assert 0.0 <= e["world_f1"] <= 1.0 and e["steps_unscored"] == 0 and e["world_n_error"] > 0
    client = mlflow.MlflowClient(resources["mlflow"].tracking_uri)
    assert client.get_run(m["mlflow_run_id"]).data.params["label_kind"] == "soft"
    hard = materialize(ALL, selection=[prm_model], instance=instance, resources=resources,
                       run_config={"ops": {"prm_model": {"config": {**soft, "label_kind": "hard"}}}})
    h = {k: v.value for k, v in hard.asset_materializations_for_node("prm_model")[0].metadata.items()}
    assert h["uri"] != m["uri"]  # the label kind is part of the run key: never resumed from the soft run
