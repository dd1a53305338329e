"""The vllm engine for real: vLLM's CPU build here (``make install`` installs it), the CUDA build on GPUs.

Nothing here skips: a machine without vLLM fails these tests. One engine is
shared by the module (a start costs 30-90 s on CPU); the last test closes it
and checks that no process of it survives. A second engine runs in a child
interpreter that raises without calling ``close()``: the interpreter must
still exit promptly and leave no vLLM process behind, and its samples must
equal the shared engine's (same model, prompts and seed in another process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollout_helpers import tiny_policy

from prmforge.engines.base import SamplingParams
from prmforge.engines.factory import EngineConfig, make_engine
from prmforge.engines.vllm import VLLMEngine, VLLMWorkerError

pytestmark = pytest.mark.vllm  # starts a vLLM engine: one at a time under `make test` (tests/conftest.py)

PROMPTS = ["Tom has 3 apples", "A train travels 60 km in 1 hour. How far does it go", "x ="]
PARAMS = SamplingParams(n=4, temperature=1.0, max_tokens=24, seed=3)
CLOSE_LIMIT_S = 30.0


def vllm_config(model: Path) -> EngineConfig:
    """The tests' engine: eager (no compile step at start), short context, a small KV cache."""
    return EngineConfig(backend="vllm", model=str(model), enforce_eager=True, max_model_len=512,
                        cpu_kv_cache_gib=0.5, gpu_memory_utilization=0.3)


def group_members(pgid: int) -> list[str]:
    """``pid name`` of every live process in the process group ``pgid`` (zombies excluded)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name_end = stat.rindex(")")
        fields = stat[name_end + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(f"{d.name} {stat[stat.index('(') + 1:name_end]}")
    return out


def wait_group_gone(pgid: int, limit_s: float) -> list[str]:
    end = time.monotonic() + limit_s
    while (left := group_members(pgid)) and time.monotonic() < end:
        time.sleep(0.2)
    return left


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[VLLMEngine]:
    eng = make_engine(vllm_config(model_dir))
    assert isinstance(eng, VLLMEngine)
    yield eng
    eng.close()


def test_vllm_is_imported_only_in_the_worker() -> None:
    import prmforge.engines.vllm  # noqa: F401

    assert "vllm" not in sys.modules


def test_generates_deterministically(engine: VLLMEngine) -> None:
    try:
        import torch

        expected = "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        expected = "cpu"
    assert engine.platform == expected
    a = engine.generate(PROMPTS, PARAMS)
    b = engine.generate(PROMPTS, PARAMS)
    assert [len(r) for r in a] == [4, 4, 4]
    assert [[c.text for c in r] for r in a] == [[c.text for c in r] for r in b]
    assert len({c.text for r in a for c in r}) > 1  # sampled, not one repeated string
    assert all(0 < c.completion_tokens <= 24 and c.prompt_tokens > 0 for r in a for c in r)
    assert all(c.finish_reason in {"stop", "length"} for r in a for c in r)
    other = engine.generate(PROMPTS, SamplingParams(n=4, temperature=1.0, max_tokens=24, seed=4))
    assert [[c.text for c in r] for r in other] != [[c.text for c in r] for r in a]
    stopped = engine.generate(PROMPTS, SamplingParams(n=2, max_tokens=24, seed=3, stop=("a",)))
    assert all("a" not in c.text for r in stopped for c in r)


def test_seeded_batch_with_long_prompts(engine: VLLMEngine) -> None:
    """Many seeded prompts at once: the batch that crashed vLLM's CPU build with chunked prefill on."""
    prompts = [f"Problem {i}: " + "12 + 7 = 19. " * (5 + i % 20) for i in range(48)]
    out = engine.generate(prompts, SamplingParams(n=3, max_tokens=16, seed=11))
    assert len(out) == 48 and all(len(r) == 3 for r in out)


def test_too_long_prompt_is_skipped_with_the_shared_reason(engine: VLLMEngine, model_dir: Path) -> None:
    """The rule and words of the HF engine (``skip_reason``); the prompts that fit still run in the batch."""
    from transformers import AutoTokenizer

    from prmforge.engines.base import skip_reason

    tok = AutoTokenizer.from_pretrained(model_dir)
    too_long = "1 + 1 = 2. " * 400  # far beyond max_model_len=512
    edge = "1 + 1 = 2. " * 30
    n_long, n_edge = len(tok(too_long)["input_ids"]), len(tok(edge)["input_ids"])
    budget = 512 - n_edge + 1  # the edge prompt fits alone, not with this many new tokens
    out = engine.generate([PROMPTS[0], too_long, edge], SamplingParams(n=2, max_tokens=budget, seed=3))
    assert [c.finish_reason for c in out[0]] != ["skipped"] * 2 and all(c.text for c in out[0])
    for row, count in ((out[1], n_long), (out[2], n_edge)):
        assert [(c.finish_reason, c.text, c.prompt_tokens) for c in row] == [("skipped", "", count)] * 2
        assert row[0].error == skip_reason(count, budget, 512)
    assert engine.generate([too_long], SamplingParams(max_tokens=8))[0][0].finish_reason == "skipped"


def test_generation_error_is_reported_and_engine_stays_usable(engine: VLLMEngine) -> None:
    with pytest.raises(VLLMWorkerError, match="generation failed"):
        engine.generate(PROMPTS[:1], SamplingParams(top_p=0.0, max_tokens=8))  # vLLM refuses top_p=0
    assert len(engine.generate(PROMPTS[:1], SamplingParams(n=2, max_tokens=8))[0]) == 2


_CHILD = textwrap.dedent("""
    import json, sys
    from prmforge.engines.base import SamplingParams
    from prmforge.engines.factory import EngineConfig, make_engine

    if __name__ == "__main__":
        cfg = EngineConfig.model_validate_json(sys.argv[1])
        eng = make_engine(cfg)
        out = eng.generate({prompts!r}, SamplingParams(n=4, temperature=1.0, max_tokens=24, seed=3))
        print(json.dumps({{"pgid": eng.pid, "texts": [[c.text for c in r] for r in out]}}), flush=True)
        raise RuntimeError("the caller failed before close()")
""")


def test_caller_raising_without_close_leaves_nothing(engine: VLLMEngine, model_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(prompts=PROMPTS))
    proc = subprocess.Popen([sys.executable, str(script), vllm_config(model_dir).model_dump_json()],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        line = ""
        while not line.startswith('{"pgid"'):  # vLLM logs to stdout too; the report comes after generating
            line = proc.stdout.readline()
            assert line, f"child failed before generating (exit code {proc.wait()})"
        raised_at = time.monotonic()
        report = json.loads(line)
        proc.stdout.close()
        proc.wait(timeout=120)
        exited_after = time.monotonic() - raised_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1  # the RuntimeError, not a hang or a kill
    assert exited_after < CLOSE_LIMIT_S, f"exit took {exited_after:.1f}s after the exception"
    assert wait_group_gone(report["pgid"], 1.0) == []
    # same model, prompts and seed in another process: the same samples
    assert report["texts"] == [[c.text for c in r] for r in engine.generate(PROMPTS, PARAMS)]


def test_close_leaves_no_process(engine: VLLMEngine) -> None:
    """Last test of the module: closing the shared engine stops every process of it."""
    pgid = engine.pid
    assert pgid is not None
    members = group_members(pgid)
    assert any("VLLM::EngineCor" in m for m in members), members  # the engine core runs in the worker's group
    start = time.monotonic()
    engine.close()
    took = time.monotonic() - start
    assert group_members(pgid) == []
    assert took < CLOSE_LIMIT_S, f"close() took {took:.1f}s"
    with pytest.raises(VLLMWorkerError, match="closed"):
        engine.generate(PROMPTS, PARAMS)
    engine.close()  # idempotent
