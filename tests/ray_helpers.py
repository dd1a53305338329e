"""Helpers the Ray tests ship to actors (importable there: the tests folder is on the workers' PYTHONPATH)."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path

from prmforge.engines.base import Completion, Engine, SamplingParams
from prmforge.engines.factory import EngineConfig, make_engine


class DiesOnce(Engine):
    """Generates, then SIGKILLs its own process before returning, once per marker file.

    Every shard call leaves a file in ``calls`` so the test can count which
    shards were computed twice.
    """

    def __init__(self, inner: Engine, marker: Path, calls: Path) -> None:
        self.inner, self.marker, self.calls = inner, marker, calls

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        out = self.inner.generate(prompts, params)
        (self.calls / f"{params.seed}-{os.getpid()}").touch()
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return out
        os.kill(os.getpid(), signal.SIGKILL)  # the actor dies mid-shard, its rows never returned
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.inner.close()


def dies_once(cfg: EngineConfig, marker: Path, calls: Path) -> Engine:
    return DiesOnce(make_engine(cfg), marker, calls)
