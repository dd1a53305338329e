"""The data home owns its dataset registry; incoming folders carry their split; MLflow masks only secrets."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from pipelines.sensors import new_dataset_sensor
from prmforge.registry import REPO_REGISTRY, RegistryError, add_dataset, incoming_spec, load_registry
from prmforge.storage import Storage
from resources.mlflow import redact
from resources.storage import StorageResource

ROW = {"question": "Tom has 3 apples and buys 2 more. How many apples?", "answer": "3 + 2 = 5\n#### 5"}


def test_add_dataset_writes_the_home_registry_and_leaves_the_checkout_alone(tmp_path: Path) -> None:
    shipped_before = REPO_REGISTRY.read_text(encoding="utf-8")
    shipped_keys = set(load_registry())

    add_dataset("mine", "world", adapter="world", split="test")

    home_file = Path(tmp_path / "prmforge-home" / "datasets.yaml")
    assert REPO_REGISTRY.read_text(encoding="utf-8") == shipped_before
    assert home_file.exists() and "mine" in home_file.read_text(encoding="utf-8")
    # The home file holds only the home's entries; the shipped ones still show.
    assert "world-demo" not in home_file.read_text(encoding="utf-8")
    assert set(load_registry()) == shipped_keys | {"mine"}
    assert load_registry()["mine"].split == "test"


def test_two_homes_do_not_see_each_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_dataset("only-in-a", "world", adapter="world")
    monkeypatch.setenv("PRMFORGE_HOME", str(tmp_path / "home-b"))
    assert "only-in-a" not in load_registry()


def test_incoming_manifest_sets_the_split_and_bad_manifests_name_the_field() -> None:
    assert incoming_spec("drop", None).split == "train"
    assert incoming_spec("drop", "split: test\nadapter: gsm8k\n").split == "test"
    with pytest.raises(RegistryError, match="unknown fields \\['splt'\\]"):
        incoming_spec("drop", "splt: test\n")
    with pytest.raises(RegistryError, match="split 'holdout'"):
        incoming_spec("drop", "split: holdout\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        incoming_spec("drop", "split: [test\n")


def test_sensor_registers_incoming_with_the_manifest_split(local_root: str, monkeypatch) -> None:
    monkeypatch.setenv("PRMFORGE_INCOMING_SETTLE_S", "0")
    storage = Storage(local_root)
    storage.write_bytes_atomic(storage.path("incoming", "eval-drop", "part.jsonl"), (json.dumps(ROW) + "\n").encode())
    storage.write_bytes_atomic(storage.path("incoming", "eval-drop", "_dataset.yaml"), b"split: test\n")
    storage.write_bytes_atomic(storage.path("incoming", "bad-drop", "part.jsonl"), (json.dumps(ROW) + "\n").encode())
    storage.write_bytes_atomic(storage.path("incoming", "bad-drop", "_dataset.yaml"), b"split: nonsense\n")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources={"storage": StorageResource(root=local_root)})
        result = new_dataset_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    assert {r.partition_key for r in result.run_requests} >= {"eval-drop"}
    assert "bad-drop" not in {r.partition_key for r in result.run_requests}
    assert load_registry()["eval-drop"].split == "test"
    assert "bad-drop" not in load_registry()


def test_mlflow_masks_secrets_but_not_settings_named_like_them() -> None:
    params = {"max_tokens": 160, "max_new_tokens": 64, "bon_max_tokens": 96, "step_token_init": "sep",
              "api_key": "sk-1", "openai_api_key": "sk-2", "hf_token": "hf_x", "aws_secret_access_key": "s",
              "password": "p", "token": "t", "credentials": "c"}
    out = redact(params)
    assert {k: out[k] for k in ("max_tokens", "max_new_tokens", "bon_max_tokens", "step_token_init")} == {
        "max_tokens": 160, "max_new_tokens": 64, "bon_max_tokens": 96, "step_token_init": "sep"}
    assert all(out[k] == "***" for k in ("api_key", "openai_api_key", "hf_token", "aws_secret_access_key",
                                         "password", "token", "credentials"))
