"""Optional local cache of trained policies, shared across storage roots.

``policy_model`` keys a trained policy by its config hash and reuses it
within one storage root. A fresh root (each test, a new S3 bucket, a second
checkout) would train the identical model again: training is deterministic,
so the weights would be bit-for-bit the same. When ``PRMFORGE_POLICY_CACHE``
names a local directory, :func:`prmforge.policy.store.ensure_policy` copies a
cached ``<dir>/<config hash>/`` into the root instead of training, and puts
every policy it trains there. The test suite points it at a session temp dir
so the tiny policy is trained once per pytest session.

A cache entry appears by one atomic rename of a fully written folder, so a
folder named after a hash is always complete; concurrent writers of the same
hash keep the first and discard their own copy. Processes that share a cache
(pytest-xdist workers, run workers of one deployment) hold
:func:`training_lock` while they look for and train a config, so each config
is trained once: the second process waits, then copies the first's entry.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prmforge.env import POLICY_CACHE_VAR, policy_cache_dir
from prmforge.storage import COMPLETE_MARKER

CACHE_ENV = POLICY_CACHE_VAR
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "policy_info.json")


def cached_policy(config_hash: str) -> Path | None:
    """The cached folder of ``config_hash`` if the cache is on and holds a complete one."""
    cache = policy_cache_dir()
    if cache is None:
        return None
    folder = cache / config_hash
    if folder.is_dir() and all((folder / name).is_file() for name in REQUIRED):
        return folder
    return None


def fetch_cached(config_hash: str, dest: str | Path) -> bool:
    """Copy the cached policy into ``dest`` (created); False when there is none."""
    folder = cached_policy(config_hash)
    if folder is None:
        return False
    shutil.copytree(folder, dest, dirs_exist_ok=True)
    return True


def store_cached(src: str | Path, config_hash: str) -> Path | None:
    """Put a trained policy folder into the cache (if on); an existing entry is kept."""
    cache = policy_cache_dir()
    if cache is None:
        return None
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / config_hash
    if cached_policy(config_hash) is not None:
        return final
    tmp = cache / f".tmp-{config_hash}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(COMPLETE_MARKER))
    try:
        os.rename(tmp, final)
    except OSError:  # another process stored the same hash first (or a stale partial folder sits there)
        shutil.rmtree(tmp, ignore_errors=True)
        if cached_policy(config_hash) is None:
            return None
    return final


@contextmanager
def training_lock(config_hash: str) -> Iterator[None]:
    """Hold the cache's exclusive lock for ``config_hash`` (nothing to hold when the cache is off).

    An ``flock`` on ``<cache>/.lock-<hash>``: the kernel drops it when its holder
    exits or is killed, so a trainer that dies never blocks the others.
    """
    cache = policy_cache_dir()
    if cache is None:
        yield
        return
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".lock-{config_hash}", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
