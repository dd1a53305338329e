"""PRM model folders: S3 round trip, pickle refusal, clear errors for unknown sources."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from prm_helpers import tiny_backbone

from prmforge.prm.model import (
    ModelSourceError,
    PickleWeightsError,
    ProcessRewardModel,
    build_prm,
    load_backbone,
    score_steps,
)
from prmforge.storage import Storage

torch.set_num_threads(1)


def test_backbone_and_prm_round_trip_through_s3(s3_root: str, tmp_path: Path) -> None:
    st = Storage(s3_root)
    uri = st.put_dir(tiny_backbone(tmp_path / "bb"), "models", "policy", "v1")
    assert uri.startswith("s3://")
    model, tok = build_prm(uri, max_length=64)
    items = [("Tom has 3 apples.", ["3 + 4 = 7", "The answer is 7."])]
    before = score_steps(model, tok, items)
    prm_uri = st.put_dir(model.save(tmp_path / "prm", tok), "models", "prm", "v1")
    loaded, tok2 = ProcessRewardModel.load(prm_uri)
    assert loaded.config.step_token_id == model.config.step_token_id
    assert score_steps(loaded, tok2, items) == before
    # A step beyond the context gets NaN, never an invented score.
    long = score_steps(loaded, tok2, [("p", ["1 + 1 = 2", "9 " * 80])], max_length=24)[0]
    assert not math.isnan(long[0]) and math.isnan(long[1])


def test_incomplete_storage_folder_is_refused(s3_root: str) -> None:
    st = Storage(s3_root)
    st.write_bytes_atomic(st.path("models", "half", "config.json"), b"{}")
    with pytest.raises(ModelSourceError, match="incomplete"):
        load_backbone(st.url("models", "half"))


def test_pickle_only_folder_is_refused(tmp_path: Path) -> None:
    folder = Path(tiny_backbone(tmp_path / "bb"))
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(PickleWeightsError, match="safetensors only"):
        load_backbone(str(folder))


def test_unknown_local_path_and_offline_hub_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_backbone("/no/such/model")
    with pytest.raises(ModelSourceError, match="offline"):
        load_backbone("someone/not-a-cached-model")
