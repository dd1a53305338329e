"""``prm_evaluation`` with ``backend: vllm``: a real Dagster materialisation on the tiny setup.

A standard-head PRM on a tiny Qwen2 base (head_dim 32, what vLLM's CPU attention takes)
is trained by ``prm_model``, evaluated twice (``backend: hf`` and ``backend: vllm``:
the benchmark and the Best-of-N candidates scored by vLLM's pooling runner on the
``qwen2_prm/`` export) and registered; the two evaluations must give the same figures,
and the registered version must say which head, which layout and what parity it has.
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
from resources import build_resources
from resources.storage import StorageResource

pytestmark = pytest.mark.vllm  # starts a vLLM engine: one at a time under `make test` (tests/conftest.py)

torch.set_num_threads(1)

LABELS, _ = world_rows(24, seed=1, dataset="world-a")
_, BENCH = world_rows(16, seed=3, split="heldout")


def _backbone(storage: StorageResource, name: str, **kw) -> str:
    from prmforge.prm.tiny import build_tiny_backbone
    from prmforge.world import generate_problems

    texts = CORPUS + [p.problem + "\n" + "\n".join(p.steps) for p in generate_problems(30, 0, "easy")]
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_backbone(Path(tmp) / "m", texts, vocab_size=400, **kw)
        return storage.get().put_dir(Path(tmp) / "m", "models", "policy", name)


@asset(name="policy_model")
def policy_stub(storage: StorageResource) -> MaterializeResult:
    return MaterializeResult(metadata={"uri": _backbone(storage, "stub", hidden_size=32, layers=1)})


@asset(name="prm_base_model")
def prm_base_stub(storage: StorageResource) -> MaterializeResult:
    """A Qwen2 sibling: the standard head on it is exported in the layout vLLM serves."""
    return MaterializeResult(metadata={"uri": _backbone(storage, "qwen2", hidden_size=64, heads=2, layers=2,
                                                        arch="qwen2")})


@asset(name="world_benchmark")
def bench_stub() -> pa.Table:
    return pa.Table.from_pylist(BENCH)


@asset(name="consensus_labels", partitions_def=dataset_partitions)
def labels_stub() -> pa.Table:
    return pa.Table.from_pylist(LABELS, schema=CONSENSUS_SCHEMA)


ALL = [policy_stub, prm_base_stub, bench_stub, labels_stub, prm_model, prm_evaluation, registered_prm]


@pytest.mark.slow
def test_prm_evaluation_backend_vllm_matches_hf_and_registers_lineage(local_root: str) -> None:
    import mlflow

    resources = build_resources(storage=StorageResource(root=local_root))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("datasets", ["world-a"])
    assert materialize(ALL, selection=[labels_stub], partition_key="world-a", instance=instance,
                       resources=resources).success
    assert materialize(ALL, selection=[policy_stub, prm_base_stub, bench_stub, prm_model], instance=instance,
                       resources=resources, run_config={"ops": {"prm_model": {"config": {
                           "head_kind": "standard", "max_steps": 4}}}}).success

    def meta(name: str) -> dict:
        ev = instance.get_latest_materialization_event(AssetKey(name))
        return {k: v.value for k, v in ev.asset_materialization.metadata.items()}

    figures = {}
    for backend in ("hf", "vllm"):
        res = materialize(ALL, selection=[prm_evaluation], instance=instance, resources=resources,
                          run_config={"ops": {"prm_evaluation": {"config": {"backend": backend}}}})
        assert res.success
        figures[backend] = meta("prm_evaluation")
    hf, vl = figures["hf"], figures["vllm"]
    assert hf["steps_total"] == vl["steps_total"] > 0 and "vllm_parity_max_abs_diff" not in hf
    assert vl["vllm_parity_steps"] == vl["steps_total"] - vl["steps_unscored"]
    assert vl["vllm_parity_max_abs_diff"] < 1e-3
    for key in ("world_f1", "world_error_acc", "world_correct_acc", "bon2_prm_min", "bon2_prm_prod", "bon2_majority"):
        assert vl[key] == pytest.approx(hf[key], abs=1e-3), key

    assert materialize(ALL, selection=[registered_prm], instance=instance, resources=resources).success
    client = mlflow.MlflowClient(resources["mlflow"].tracking_uri)
    tags = client.get_model_version("prmforge-prm", meta("registered_prm")["version"]).tags
    assert tags["prm.head_kind"] == "standard" and tags["prm.export_layout"] == "qwen2-prm"
    assert float(tags["prm.export_parity_hf"]) < 1e-5
    assert tags["prm.vllm_parity"].startswith("max_abs_diff=") and "backend vllm" in tags["prm.vllm_parity"]
