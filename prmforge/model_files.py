"""Where a model's files are, and whether they are safe to load: one resolver for every loader.

The engines (HF, vLLM), the rollouts' chat template, the PRM and the registry
all take a model *reference*: a local folder, a storage URI (``file://`` or
``s3://``, as written by :meth:`prmforge.storage.Storage.put_dir`) or a hub id.
They used to resolve it in two places with two caches and two pickle guards
that disagreed; this module is the one place, so a model fetched by the
policy engine is the same folder the PRM loads.

* A local folder is used in place (a file, or a missing path that looks like a
  path, is an error, never a hub lookup).
* A ``file://`` storage URI is used in place and must carry the storage
  ``_COMPLETE`` marker, so a half-written model is never loaded.
* An ``s3://`` folder must be complete too; it is downloaded once into the
  model cache (``PRMFORGE_MODEL_CACHE`` or ``<PRMFORGE_HOME>/cache/models``)
  under a hash of the URI, through a temporary folder renamed into place, so
  a killed download is never mistaken for a model.
* A ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` registry URI is resolved to its
  version (so a moved alias is a new download) and that version's PRM folder (the
  pyfunc's ``prm`` artifact) is downloaded once into the same cache.
* Anything else is a hub id, returned as a string: loaders read it from the
  local Hugging Face cache only (nothing downloads at run time).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from prmforge.env import model_cache_dir

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ModelSourceError(RuntimeError):
    """A model reference (hub id, path, storage URI) could not be resolved or loaded."""


class PickleWeightsError(ModelSourceError):
    """A model folder has no safetensors weights; pickle checkpoints are refused (they run code on load)."""


def resolve_model_dir(ref: str) -> Path | str:
    """A local folder (``Path``) for ``ref``, or the hub id itself (``str``); see the module docstring."""
    if ref.startswith(("s3://", "s3a://")):
        return _download(ref)
    if ref.startswith("models:/"):
        return _download_registered(ref)
    if ref.startswith("file://"):
        from prmforge.storage import COMPLETE_MARKER

        folder = Path(ref[len("file://"):])
        if not (folder / COMPLETE_MARKER).is_file():
            raise ModelSourceError(f"{ref} is missing or incomplete (no {COMPLETE_MARKER} marker)")
        return folder
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{ref} is a file; a model is a folder with config.json")
        return path
    if ref.startswith(("/", "./", "../", "~")):
        raise ModelSourceError(f"local model folder {ref} does not exist")
    return ref


def require_safetensors(folder: str | Path) -> None:
    """Refuse a model folder without ``*.safetensors`` weights (naming any pickle checkpoints found).

    A folder with both keeps working: loaders pass ``use_safetensors=True`` (or
    vLLM's ``load_format="safetensors"``), so the pickle is never read.
    """
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    found = f" (found pickle checkpoints {pickles}, refused: unpickling runs arbitrary code)" if pickles else ""
    raise PickleWeightsError(
        f"model folder {folder} has no .safetensors weights{found}; prmforge loads safetensors only. Convert the "
        "checkpoint with `model.save_pretrained(dir, safe_serialization=True)` in a trusted environment."
    )


def local_model(ref: str) -> tuple[str, dict[str, bool]]:
    """``(path or hub id, extra from_pretrained kwargs)`` for a loader, with the safetensors guard applied.

    A local folder must hold safetensors; a hub id is read from the local
    Hugging Face cache only (``local_files_only``), where ``use_safetensors``
    enforces the same rule.
    """
    where = resolve_model_dir(ref)
    if isinstance(where, Path):
        require_safetensors(where)
        return str(where), {}
    return where, {"local_files_only": True}


def _download(uri: str) -> Path:
    from prmforge.storage import COMPLETE_MARKER, Storage

    target = model_cache_dir() / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if (target / COMPLETE_MARKER).exists():
        return target
    storage = Storage(uri.rstrip("/"))
    if not storage.dir_complete():
        raise ModelSourceError(f"{uri} is missing or incomplete (no {COMPLETE_MARKER} marker)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=target.parent))
    try:
        storage.get_dir(tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if target.exists():  # a concurrent download finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def registered_version(ref: str) -> tuple[str, str]:
    """``(name, version)`` of a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI, via the registry."""
    from mlflow.tracking import MlflowClient

    from prmforge.env import default_tracking_uri

    body = ref[len("models:/"):].strip("/")
    client = MlflowClient(tracking_uri=default_tracking_uri(), registry_uri=default_tracking_uri())
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, _, version = body.rpartition("/")
        if not name or not version.isdigit():
            raise ModelSourceError(f"{ref}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return name, str(client.get_model_version(name, version).version)
    except ModelSourceError:
        raise
    except Exception as exc:  # registry errors: unknown name/alias, unreachable server
        raise ModelSourceError(f"{ref}: not found in the MLflow registry at {default_tracking_uri()} "
                               f"({type(exc).__name__}: {str(exc)[:200]})") from exc


def _download_registered(ref: str) -> Path:
    """The PRM folder of a registered version (its pyfunc's ``prm`` artifact), downloaded once."""
    import mlflow
    from mlflow.models import Model

    from prmforge.env import default_tracking_uri
    from prmforge.storage import COMPLETE_MARKER

    name, version = registered_version(ref)
    key = f"{default_tracking_uri()}|{name}|{version}"
    target = model_cache_dir() / ("mlflow-" + hashlib.sha256(key.encode()).hexdigest()[:24])
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=target.parent))
    try:
        mlflow.set_tracking_uri(default_tracking_uri())
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp)))
        # the pyfunc's ``prm`` artifact keeps its source folder's name (``prm-<run key>`` for the asset's PRMs):
        # the MLmodel file says where it is
        artifacts = Model.load(str(got)).flavors.get("python_function", {}).get("artifacts", {})
        prm = got / artifacts["prm"]["path"] if "prm" in artifacts else None
        if prm is None or not prm.is_dir():
            raise ModelSourceError(f"{ref} (version {version}) has no prm artifact: not a prmforge PRM")
        os.replace(prm, tmp / "prm")
        (tmp / "prm" / COMPLETE_MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp / "prm", target)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
