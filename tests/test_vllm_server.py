"""The ``openai`` engine against a real vLLM server (its CPU build here) on 127.0.0.1.

One server per module (a start costs 45-90 s on CPU). ``policy_rollouts`` is
materialised through it twice: once undisturbed, once with the server killed
(SIGKILL of its whole process group) after the first shard and restarted;
the shard in flight is retried until the server is back, no rollout is lost
or recorded as an engine error, and the table equals the undisturbed one.
Nothing skips: without vLLM these tests fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from dagster import AssetSpec, DagsterInstance, materialize
from net_helpers import free_port
from rollout_helpers import tiny_policy, world_seed_table

from assets.partitions import DATASETS_PARTITIONS_NAME, dataset_partitions
from assets.rollouts import policy_rollouts
from prmforge.engines.base import SamplingParams
from prmforge.engines.factory import EngineConfig, make_engine
from prmforge.engines.vllm_server import VLLMServer, server_command
from prmforge.storage import Storage
from resources import build_resources
from resources.engine import EngineResource
from resources.storage import StorageResource

pytestmark = pytest.mark.vllm  # starts a vLLM engine: one at a time under `make test` (tests/conftest.py)

PART = "world-demo"
NAME = "tiny-policy"
# one request per shard at a time, so the kill lands while shards remain; retries span a restart
RUN_CONFIG = {"ops": {"policy_rollouts": {"config": {"shard_size": 2, "max_problems": 16}}}}
COLUMNS = ["rollout_id", "text", "steps", "completion_tokens", "finish_reason"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    model = tiny_policy(tmp_path_factory.mktemp("policy") / "tiny")
    port = free_port()
    # 1,024 positions: an LLM judge's critique prompt in the chat template is about 700 tokens
    cmd = server_command(str(model), port, NAME, cpu=not torch.cuda.is_available(), dtype="float32",
                         kv_cache_gib=0.5, max_model_len=1024)
    srv = VLLMServer(cmd, port, tmp_path_factory.mktemp("server") / "vllm-server.log")
    srv.start()
    yield srv
    srv.kill()


def _engine(srv: VLLMServer, **kw) -> EngineResource:
    return EngineResource(backend="openai", model=NAME, base_url=srv.base_url, api_key_env="PRMFORGE_TEST_NO_KEY",
                          max_concurrency=1, timeout_s=60, **kw)


def _materialize(root: str, engine: EngineResource):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, [PART])
    return materialize([AssetSpec("seed_problems", partitions_def=dataset_partitions), policy_rollouts],
                       selection=[policy_rollouts.key], partition_key=PART, instance=instance,
                       resources=build_resources(storage=StorageResource(root=root), policy_engine=engine),
                       run_config=RUN_CONFIG, raise_on_error=False)


def test_openai_engine_samples_from_the_server(server: VLLMServer) -> None:
    eng = make_engine(EngineConfig(backend="openai", model=NAME, base_url=server.base_url,
                                   api_key_env="PRMFORGE_TEST_NO_KEY"))
    try:
        sp = SamplingParams(n=3, temperature=1.0, max_tokens=16, seed=5)
        a = eng.generate(["Tom has 3 apples", "x ="], sp)
        b = eng.generate(["Tom has 3 apples", "x ="], sp)
    finally:
        eng.close()
    assert [len(r) for r in a] == [3, 3]
    assert all(c.finish_reason in {"stop", "length"} and c.completion_tokens > 0 for r in a for c in r)
    assert [[c.text for c in r] for r in a] == [[c.text for c in r] for r in b]


def test_too_long_prompt_is_skipped_not_failed(server: VLLMServer, tmp_path: Path) -> None:
    """The server's own context error is a skip; with a local tokenizer and the context, the shared rule applies."""
    from prmforge.engines.base import PROMPT_TOO_LONG, skip_reason

    model = tiny_policy(tmp_path / "tiny")  # the served model (same seed, same folder contents)
    too_long = "1 + 1 = 2. " * 1000  # far beyond the tiny policy's 2,048 positions
    sp = SamplingParams(n=2, max_tokens=8, seed=5)
    plain = make_engine(EngineConfig(backend="openai", model=NAME, base_url=server.base_url,
                                     api_key_env="PRMFORGE_TEST_NO_KEY", max_retries=0))
    out = plain.generate([too_long, "x ="], sp)
    assert [c.finish_reason for c in out[0]] == ["skipped", "skipped"], out[0][0].error
    assert out[0][0].error.startswith(PROMPT_TOO_LONG) and "maximum context length" in out[0][0].error
    assert all(c.finish_reason in {"stop", "length"} for c in out[1])
    counted = make_engine(EngineConfig(backend="openai", model=NAME, base_url=server.base_url,
                                       api_key_env="PRMFORGE_TEST_NO_KEY", tokenizer=str(model), max_model_len=2048))
    row = counted.generate([too_long], sp)[0]
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(model)(too_long)["input_ids"])
    assert row[0].finish_reason == "skipped" and row[0].error == skip_reason(n, 8, 2048)


def test_server_killed_mid_run_and_restarted(server: VLLMServer, tmp_path: Path) -> None:
    seed = world_seed_table(16, dataset=PART)
    roots = {}
    for name in ("steady", "killed"):
        (tmp_path / name).mkdir()
        roots[name] = (tmp_path / name).as_uri()
        Storage(roots[name]).write_dataset("seed_problems", seed, PART)
    steady = _materialize(roots["steady"], _engine(server))
    assert steady.success

    shards = tmp_path / "killed" / "shards"
    result: dict = {}
    # backoff 0.5 s doubling to 30 s: 14 retries wait about 5 minutes, longer than a restart on a busy box
    run = threading.Thread(target=lambda: result.update(res=_materialize(roots["killed"],
                                                                         _engine(server, max_retries=14))))
    run.start()
    deadline = time.monotonic() + 300
    while not list(shards.rglob("shard-*.parquet")) and run.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    done_at_kill = len(list(shards.rglob("shard-*.parquet")))
    server.kill()
    assert 0 < done_at_kill < 8, f"{done_at_kill} of 8 shards were done when the server was killed"
    server.start()
    run.join(timeout=600)
    assert not run.is_alive()
    res = result["res"]
    assert res.success
    meta = res.asset_materializations_for_node("policy_rollouts")[0].metadata
    assert meta["shards_total"].value == 8 and meta["shards_computed"].value == 8
    killed = Storage(roots["killed"]).read_dataset("policy_rollouts", PART)
    assert killed.num_rows == 32 and "error" not in killed.column("finish_reason").to_pylist()
    reference = Storage(roots["steady"]).read_dataset("policy_rollouts", PART)
    assert killed.select(COLUMNS).to_pylist() == reference.select(COLUMNS).to_pylist()


def test_llm_judge_without_a_local_tokenizer_gets_the_servers_chat_template(server: VLLMServer,
                                                                             tmp_path: Path) -> None:
    """The LLM judge on ``openai`` with no local tokenizer sends its critique prompt to /v1/chat/completions:
    vLLM wraps it in the served model's ChatML template (it counts exactly the templated prompt's tokens,
    which this process never built) and the verdicts are parsed or recorded, never guessed."""
    from transformers import AutoTokenizer

    from prmforge.labeling.judges import LLMJudge
    from prmforge.labeling.llm_judge import OK, STATUSES, critique_prompt, judge_prompt
    from prmforge.labeling.settings import JudgeSettings

    tok = AutoTokenizer.from_pretrained(tiny_policy(tmp_path / "tiny"))  # the served model's tokenizer
    problems = ["Tom has 3 apples and buys 5 more.", "Mia has 12 cards."]
    steps = [["3 + 5 = 8", "8 x 2 = 17"], ["12 - 4 = 8", "The answer is 8."]]
    judge = LLMJudge(EngineConfig(backend="openai", model=NAME, base_url=server.base_url,
                                  api_key_env="PRMFORGE_TEST_NO_KEY", max_retries=0))
    with judge:
        rows = judge.judge(problems, steps, JudgeSettings(max_tokens=12, temperature=0.0))
    assert judge.identity()["chat_template"] == "server" and judge.identity()["chat_endpoint"] is True
    for r, p, st in zip(rows, problems, steps, strict=True):
        templated = len(tok(judge_prompt(p, st, tok), add_special_tokens=False)["input_ids"])
        assert r.prompt_tokens == templated > len(tok(critique_prompt(p, st), add_special_tokens=False)["input_ids"])
        assert r.status in STATUSES and 0 < r.completion_tokens <= 12
        assert (r.first_error is not None) == (r.status == OK)
