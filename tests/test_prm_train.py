"""PRM training: the loss falls on a tiny model, and a killed run resumes to identical weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prm_helpers import synthetic_rows, tiny_backbone, train_settings

from prmforge.prm.data import encode_dataset
from prmforge.prm.model import build_prm
from prmforge.prm.settings import PRMTrainSettings
from prmforge.prm.train import CheckpointStore, batch_indices, lr_lambda, train_prm
from prmforge.storage import Storage

torch.set_num_threads(1)


class Killed(RuntimeError):
    pass


def _setup(tmp_path: Path, n: int = 48):
    path = tiny_backbone(tmp_path / "bb")
    model, tok = build_prm(path, max_length=96, seed=0)
    examples, stats = encode_dataset(tok, synthetic_rows(n), model.config.step_token_id, 96)
    assert stats.examples_kept == n
    return path, model, tok, examples


def test_loss_falls(tmp_path: Path) -> None:
    _, model, tok, examples = _setup(tmp_path)
    cfg = train_settings(lr=3e-3, epochs=6, micro_batch_size=8, grad_accum=2, seed=1, checkpoint_every=1000)
    logged: list[tuple[int, dict]] = []
    res = train_prm(model, examples, cfg, tok.pad_token_id, log_fn=lambda m, s: logged.append((s, m)))
    losses = [h["loss"] for h in res.history]
    assert len(losses) == res.steps == 18
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    assert [s for s, _ in logged] == list(range(1, 19))
    assert all(m["tokens_per_s"] > 0 for _, m in logged)


def test_schedule_warmup_then_cosine() -> None:
    f = lr_lambda(100, 10, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert f(55) == pytest.approx(0.55)


def test_batches_cover_data_once_per_epoch() -> None:
    cfg = train_settings(micro_batch_size=3, grad_accum=2, seed=5)
    seen = [i for step in range(4) for mb in batch_indices(20, step, cfg, 1, 0) for i in mb]
    assert sorted(seen) == list(range(20))
    # Two ranks split each global batch without overlap.
    r0 = [i for mb in batch_indices(20, 0, cfg, 2, 0) for i in mb]
    r1 = [i for mb in batch_indices(20, 0, cfg, 2, 1) for i in mb]
    assert not set(r0) & set(r1) and len(r0) + len(r1) == 12


def test_length_grouping_keeps_coverage_and_cuts_padding() -> None:
    import random

    lengths = [random.Random(i).randint(10, 200) for i in range(256)]
    grouped = train_settings(micro_batch_size=8, seed=2, group_by_length=8)
    plain = train_settings(micro_batch_size=8, seed=2, group_by_length=1)

    def padded(cfg: PRMTrainSettings) -> int:
        total = 0
        for step in range(32):
            for mb in batch_indices(256, step, cfg, 1, 0, lengths):
                total += max(lengths[i] for i in mb) * len(mb)
        return total

    seen = sorted(i for step in range(32) for mb in batch_indices(256, step, grouped, 1, 0, lengths) for i in mb)
    assert seen == list(range(256))
    assert padded(grouped) < 0.8 * padded(plain)
    # Deterministic: the same step always yields the same batch.
    assert batch_indices(256, 5, grouped, 1, 0, lengths) == batch_indices(256, 5, grouped, 1, 0, lengths)


@pytest.mark.parametrize("root_kind", ["local", "s3"])
def test_killed_run_resumes_to_identical_weights(tmp_path: Path, root_kind: str, request) -> None:
    root = request.getfixturevalue("local_root" if root_kind == "local" else "s3_root")
    path, model_a, tok, examples = _setup(tmp_path, n=24)
    cfg = train_settings(lr=3e-3, epochs=3, micro_batch_size=4, grad_accum=2, seed=3, checkpoint_every=2,
                      keep_checkpoints=2)
    # Uninterrupted reference run.
    ref = train_prm(model_a, examples, cfg, tok.pad_token_id)
    assert ref.steps == 9

    # Killed after step 5 (checkpoint at 4), then started again from scratch objects.
    store = CheckpointStore(Storage(root), "run-test")

    def kill(step: int) -> None:
        if step == 5:
            raise Killed()

    model_b, _ = build_prm(path, max_length=96, seed=0)
    with pytest.raises(Killed):
        train_prm(model_b, examples, cfg, tok.pad_token_id, checkpoints=store, on_step=kill)
    assert store.latest() == 4
    model_c, _ = build_prm(path, max_length=96, seed=0)
    res = train_prm(model_c, examples, cfg, tok.pad_token_id, checkpoints=store)
    assert res.resumed_from == 4
    a, c = model_a.state_dict(), model_c.state_dict()
    assert a.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], c[k]), k
    # Only safetensors and JSON in the checkpoint, and old checkpoints are pruned.
    storage = Storage(root)
    base = storage.path("checkpoints", "prm", "run-test")
    names = sorted(p.rsplit("/", 1)[-1] for p in storage.fs.find(base))
    assert set(names) == {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json",
                          "_COMPLETE"}
    assert len(storage.fs.ls(base)) == 2


@pytest.mark.slow
def test_torchrun_ddp_two_ranks(tmp_path: Path) -> None:
    """Two gloo ranks on CPU train the same model as one process with the same global batch."""
    import json
    import os
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from prmforge.prm.model import ProcessRewardModel

    path = tiny_backbone(tmp_path / "bb")
    pq.write_table(pa.Table.from_pylist(synthetic_rows(16)), tmp_path / "labels.parquet")
    settings = json.dumps({"max_steps": 3, "micro_batch_size": 4, "max_length": 96, "lr": 3e-3,
                           "checkpoint_every": 100})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--labels", str(tmp_path / "labels.parquet"), "--base-model", path, "--settings"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "prmforge.prm.train_cli", *common, settings,
                          "--out", str(tmp_path / "ddp")], capture_output=True, text=True, timeout=180, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single_settings = json.dumps({**json.loads(settings), "micro_batch_size": 8})
    one = subprocess.run([sys.executable, "-m", "prmforge.prm.train_cli", *common, single_settings,
                          "--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=180, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    a, _ = ProcessRewardModel.load(tmp_path / "ddp")
    b, _ = ProcessRewardModel.load(tmp_path / "one")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(va, vb, atol=1e-5), k


def test_class_weights_balance_skewed_labels() -> None:
    from prmforge.prm.data import EncodedExample
    from prmforge.prm.train import class_weights, prm_loss

    exs = [EncodedExample([1, 2], [-100.0, 0.0], [1], 1, 0), EncodedExample([1, 2, 3], [-100.0, 0.0, 0.0], [1, 2], 2, 0),
           EncodedExample([1, 2], [-100.0, 1.0], [1], 1, 0)]
    w_wrong, w_right = class_weights(exs)
    assert (w_wrong, w_right) == pytest.approx((4 / 6, 4 / 2))
    assert w_wrong * 3 == pytest.approx(w_right * 1)  # each class carries the same total weight
    logits = torch.zeros(1, 2, 2)
    labels = torch.tensor([[0, 1]])
    plain, n = prm_loss(logits, labels, "ce")
    weighted, _ = prm_loss(logits, labels, "ce", (w_wrong, w_right))
    assert n == 2 and weighted.item() == pytest.approx(plain.item() / 2 * (w_wrong + w_right))


def test_soft_labels_train_with_bce_against_the_value(tmp_path: Path) -> None:
    """``label_kind: soft`` trains on float targets (BCE; 'ce' becomes 'bce') and the loss falls."""
    from prmforge.prm.pipeline import training_rows

    rows = [{**r, "soft_labels": [0.8 if ok else 0.0 for ok in r["labels"]]} for r in synthetic_rows(48)]
    with pytest.raises(ValueError, match="no soft_labels"):
        training_rows([{**rows[0], "soft_labels": None}], "soft")
    from prmforge.errors import ConfigError

    adaptive = {**rows[0], "mc_labeler": "mc_binary+reuse+adaptive"}
    with pytest.raises(ConfigError, match="adaptive MC sampling"):  # its values overstate
        training_rows([rows[1], adaptive], "soft")
    assert training_rows([adaptive], "hard") == [adaptive]
    soft = training_rows(rows, "soft")
    assert soft[0]["labels"] == rows[0]["soft_labels"] and training_rows(rows, "hard")[0]["labels"] == rows[0]["labels"]
    model, tok = build_prm(tiny_backbone(tmp_path / "bb"), max_length=96, seed=0)
    examples, _ = encode_dataset(tok, soft, model.config.step_token_id, 96)
    assert {v for ex in examples for v in ex.labels if v >= 0} == {0.0, 0.8}
    cfg = train_settings(lr=3e-3, epochs=6, micro_batch_size=8, grad_accum=2, seed=1, checkpoint_every=1000,
                         label_kind="soft")
    assert cfg.loss == "ce" and cfg.effective_loss == "bce"
    assert train_settings(label_kind="soft", loss="mse").effective_loss == "mse"
    res = train_prm(model, examples, cfg, tok.pad_token_id)
    losses = [h["loss"] for h in res.history]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.85 * first, (first, last)
