"""vLLM backend. The GPU test runs only where vllm and CUDA are present; the
worker plumbing (spawned process, pipe, start-up errors) is tested everywhere."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from rollout_helpers import tiny_policy

from prmforge.engines.base import SamplingParams
from prmforge.engines.factory import EngineConfig, make_engine


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


def test_vllm_is_imported_only_in_the_worker() -> None:
    import prmforge.engines.vllm  # noqa: F401

    assert "vllm" not in sys.modules


@pytest.mark.skipif(HAS_VLLM, reason="checks the error path when vllm is missing")
def test_worker_start_failure_is_reported(model_dir: Path) -> None:
    from prmforge.engines.vllm import VLLMWorkerError

    with pytest.raises(VLLMWorkerError, match="vllm"):
        make_engine(EngineConfig(backend="vllm", model=str(model_dir)))


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and _cuda()), reason="needs vllm and a CUDA device")
def test_vllm_generates_deterministically(model_dir: Path) -> None:
    eng = make_engine(EngineConfig(backend="vllm", model=str(model_dir), gpu_memory_utilization=0.3,
                                   max_model_len=512))
    try:
        prompts = ["Tom has 3 apples", "A train travels 60 km in 1 hour. How far does it go", "x ="]
        sp = SamplingParams(n=4, temperature=1.0, max_tokens=24, seed=3)
        a = eng.generate(prompts, sp)
        b = eng.generate(prompts, sp)
        assert [len(r) for r in a] == [4, 4, 4]
        assert [[c.text for c in r] for r in a] == [[c.text for c in r] for r in b]
        assert all(0 < c.completion_tokens <= 24 and c.prompt_tokens > 0 for r in a for c in r)
        assert all(c.finish_reason in {"stop", "length"} for r in a for c in r)
        stopped = eng.generate(prompts, SamplingParams(n=2, max_tokens=24, seed=3, stop=("a",)))
        assert all("a" not in c.text for r in stopped for c in r)
    finally:
        eng.close()
