"""The one model resolver: local folders, storage URIs (file://, s3:// on the moto server), hub ids, pickle refusal."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prmforge.model_files import (
    ModelSourceError,
    PickleWeightsError,
    local_model,
    model_cache_dir,
    require_safetensors,
    resolve_model_dir,
)
from prmforge.storage import COMPLETE_MARKER, Storage


def _folder(path: Path) -> Path:
    """A minimal model folder: config plus safetensors weights (the resolver never parses them)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.arange(4, dtype=torch.float32)}, str(path / "model.safetensors"))
    return path


def test_local_folder_is_used_in_place(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "m")
    assert resolve_model_dir(str(folder)) == folder
    assert local_model(str(folder)) == (str(folder), {})
    with pytest.raises(ModelSourceError, match="is a file"):
        resolve_model_dir(str(folder / "config.json"))
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "missing"))


def test_hub_id_is_passed_through_offline() -> None:
    assert resolve_model_dir("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert local_model("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", {"local_files_only": True})


def test_s3_folder_downloads_once_into_the_configured_cache(s3_root: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "model-cache"
    monkeypatch.setenv("PRMFORGE_MODEL_CACHE", str(cache))
    assert model_cache_dir() == cache
    st = Storage(s3_root)
    uri = st.put_dir(_folder(tmp_path / "src"), "models", "policy", "v1")
    local = resolve_model_dir(uri)
    assert isinstance(local, Path) and local.parent == cache
    assert (local / COMPLETE_MARKER).is_file() and (local / "model.safetensors").is_file()
    assert (local / "config.json").read_text() == '{"model_type": "llama"}'
    # the second resolution is the cached copy: deleting the remote folder does not matter
    st.delete("models", "policy", "v1")
    assert resolve_model_dir(uri) == local
    assert [p.name for p in cache.iterdir()] == [local.name]  # no temporary folder left behind


def test_incomplete_storage_folders_are_refused(s3_root: str, tmp_path: Path) -> None:
    st = Storage(s3_root)
    st.write_bytes_atomic(st.path("models", "half", "config.json"), b"{}")
    with pytest.raises(ModelSourceError, match="incomplete"):
        resolve_model_dir(st.url("models", "half"))
    local = Storage(f"file://{tmp_path / 'store'}")
    local.write_bytes_atomic(local.path("models", "half", "config.json"), b"{}")
    with pytest.raises(ModelSourceError, match="incomplete"):
        resolve_model_dir(local.url("models", "half"))
    uri = local.put_dir(_folder(tmp_path / "src"), "models", "whole")
    assert resolve_model_dir(uri) == Path(uri.removeprefix("file://"))


class _Evil:
    """Unpickling this would write a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_pickle_weights_are_refused_never_read(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(PickleWeightsError, match=r"no \.safetensors weights .*pytorch_model\.bin.*safetensors only"):
        require_safetensors(bad)
    with pytest.raises(PickleWeightsError):
        local_model(str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PickleWeightsError, match="no .safetensors weights; "):
        require_safetensors(empty)
    both = _folder(tmp_path / "both")
    (both / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(str(marker))))
    require_safetensors(both)  # safetensors present: the loader reads those, never the pickle
    assert not marker.exists()
