"""PRMFORGE_POLICY_CACHE: a policy trained once is copied into other storage roots, never retrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prmforge.policy.store as store
from prmforge.policy import PolicySettings
from prmforge.policy.cache import CACHE_ENV, cached_policy, store_cached
from prmforge.policy.store import ensure_policy
from prmforge.storage import Storage

torch.set_num_threads(1)

# Seconds to train: the cache logic, not the policy's quality, is under test.
FAST = PolicySettings(n_train_problems=40, tokenizer_problems=20, vocab_size=300, hidden_size=16,
                      intermediate_size=32, num_layers=1, num_heads=2, train_steps=3, batch_size=4,
                      warmup_steps=1, log_every=1, calib_problems=4, max_new_tokens=16)


def _no_training(*_a, **_k):
    raise AssertionError("trained although the policy cache holds this config")


def test_cache_fills_then_serves_other_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    h = FAST.config_hash()

    first = ensure_policy(Storage((tmp_path / "a").as_uri()), FAST, tmp_path / "w1")
    assert not first.reused and not first.from_cache
    assert cached_policy(h) == cache / h
    assert not list(cache.glob(".tmp-*"))  # written under a temp name, renamed when whole

    monkeypatch.setattr(store, "train_policy", _no_training)
    root_b = Storage((tmp_path / "b").as_uri())
    second = ensure_policy(root_b, FAST, tmp_path / "w2")
    assert second.from_cache and not second.reused and second.config_hash == h
    assert root_b.dir_complete("models", "policy", h)
    weights = "model.safetensors"
    assert (tmp_path / "w2" / h / weights).read_bytes() == (tmp_path / "w1" / h / weights).read_bytes()
    assert second.calibration == first.calibration  # same calibration settings: not recomputed

    # the root's own reuse still comes first
    third = ensure_policy(root_b, FAST, tmp_path / "w3")
    assert third.reused and not third.from_cache

    # changed calibration settings recalibrate the cached copy, still without training
    recal = FAST.model_copy(update={"calib_problems": 3})
    fourth = ensure_policy(Storage((tmp_path / "c").as_uri()), recal, tmp_path / "w4")
    assert fourth.from_cache and fourth.calibration.n == 3


def test_cache_off_or_forced_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    ensure_policy(Storage((tmp_path / "a").as_uri()), FAST, tmp_path / "w1")
    forced = ensure_policy(Storage((tmp_path / "b").as_uri()), FAST, tmp_path / "w2", force=True)
    assert not forced.from_cache
    monkeypatch.delenv(CACHE_ENV)
    off = ensure_policy(Storage((tmp_path / "c").as_uri()), FAST, tmp_path / "w3")
    assert not off.from_cache and not off.reused


def test_incomplete_cache_entry_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    h = FAST.config_hash()
    (cache / h).mkdir(parents=True)
    (cache / h / "config.json").write_text("{}")  # a hand-made half folder: no weights
    assert cached_policy(h) is None
    build = ensure_policy(Storage((tmp_path / "a").as_uri()), FAST, tmp_path / "w")
    assert not build.from_cache
    assert store_cached(tmp_path / "w" / h, h) is None  # the stray folder is left alone, not overwritten
    assert not list(cache.glob(".tmp-*"))
