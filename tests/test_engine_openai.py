"""OpenAIEngine against a real HTTP server on 127.0.0.1 (tests/openai_server.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from openai_server import CompletionServer, fake_text

from prmforge.engines.base import SamplingParams
from prmforge.engines.factory import EngineConfig, make_engine
from prmforge.engines.openai import OpenAIEngine


def engine(server: CompletionServer, **kw) -> OpenAIEngine:
    kw = {"max_retries": 3, "timeout_s": 5.0, "backoff_base_s": 0.01, "backoff_max_s": 0.05, **kw}
    return OpenAIEngine("tiny", base_url=server.base_url, api_key_env="PRMF_TEST_KEY", **kw)


def test_completions_n_stop_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRMF_TEST_KEY", "sk-secret-123")
    with CompletionServer(api_key="sk-secret-123") as srv:
        out = engine(srv).generate(["one two", "three"], SamplingParams(n=3, max_tokens=6, seed=4))
        assert [len(r) for r in out] == [3, 3]
        for prompt, row in zip(["one two", "three"], out, strict=True):
            for i, c in enumerate(row):  # choices come back in index order even if the server shuffles them
                assert c.text == " ".join(fake_text(prompt, 4, i, 6)[:6])
                assert c.finish_reason == "length" and c.error is None
                assert c.prompt_tokens == len(prompt.split())
            assert sum(c.completion_tokens for c in row) == 18
        assert srv.requests[0]["n"] == 3 and srv.requests[0]["seed"] == 4
        assert srv.requests[0]["authorization"] == "Bearer sk-secret-123"
        stopped = engine(srv).generate(["one two"], SamplingParams(n=2, max_tokens=10, stop=("STOP",)))
        for i, c in enumerate(stopped[0]):
            assert c.finish_reason == "stop"
            assert c.text == " ".join(fake_text("one two", 0, i, 10)[:3])


def test_retries_429_5xx_timeouts_then_succeeds() -> None:
    with CompletionServer(timeout_sleep_s=1.0) as srv:
        srv.scripts = {"a": ["429", "500", "ok"], "b": ["timeout", "503", "ok"], "c": ["garbage", "ok"]}
        out = engine(srv, timeout_s=0.3).generate(["a", "b", "c", "d"], SamplingParams(n=2, max_tokens=4))
        assert all(c.finish_reason == "length" for row in out for c in row)
        assert [srv.attempts(p) for p in "abcd"] == [3, 3, 2, 1]


def test_failure_after_retries_is_an_error_completion_not_an_exception() -> None:
    with CompletionServer() as srv:
        srv.scripts = {"bad": ["500"] * 10, "garbled": ["garbage"] * 10, "client-error": ["400", "ok"]}
        out = engine(srv, max_retries=2).generate(["bad", "good", "garbled", "client-error"],
                                                   SamplingParams(n=2, max_tokens=3))
        bad, good, garbled, client_error = out
        assert [c.finish_reason for c in bad] == ["error", "error"]
        assert "HTTP 500" in bad[0].error and "3 attempt" in bad[0].error and bad[0].text == ""
        assert [c.finish_reason for c in good] == ["length", "length"]
        assert "unparseable" in garbled[0].error
        # a 4xx other than 429 is not retried
        assert client_error[0].finish_reason == "error" and "HTTP 400" in client_error[0].error
        assert srv.attempts("bad") == 3 and srv.attempts("client-error") == 1


def test_unreachable_server_gives_error_completions() -> None:
    with CompletionServer() as srv:
        url = srv.base_url
    eng = OpenAIEngine("tiny", base_url=url, max_retries=1, timeout_s=1.0, backoff_base_s=0.01)
    out = eng.generate(["x"], SamplingParams(n=1, max_tokens=2))
    assert out[0][0].finish_reason == "error" and "2 attempt" in out[0][0].error


def test_bounded_concurrency() -> None:
    with CompletionServer(delay_s=0.05) as srv:
        prompts = [f"p{i}" for i in range(24)]
        out = engine(srv, max_concurrency=3).generate(prompts, SamplingParams(n=1, max_tokens=2))
        assert all(row[0].finish_reason == "length" for row in out)
        assert 2 <= srv.peak <= 3


def test_api_key_never_in_errors_or_logs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PRMF_TEST_KEY", "sk-wrong-456")
    caplog.set_level(logging.DEBUG)
    with CompletionServer(api_key="sk-right") as srv:
        srv.scripts = {"r": ["500", "ok"]}
        out = engine(srv).generate(["q", "r"], SamplingParams(n=1, max_tokens=2))
        err = out[0][0].error
        assert out[0][0].finish_reason == "error" and "HTTP 401" in err
        assert "sk-wrong-456" not in err and "***" in err  # the server echoed it; we scrubbed it
        assert "sk-wrong-456" not in caplog.text
        assert srv.requests[0]["authorization"] == "Bearer sk-wrong-456"


def test_missing_key_env_sends_no_auth_and_factory_builds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRMF_TEST_KEY", raising=False)
    with CompletionServer() as srv:
        eng = make_engine(EngineConfig(backend="openai", model="tiny", base_url=srv.base_url,
                                       api_key_env="PRMF_TEST_KEY", max_concurrency=2, timeout_s=5))
        assert isinstance(eng, OpenAIEngine)
        out = eng.generate(["z"], SamplingParams(n=1, max_tokens=2))
        assert out[0][0].finish_reason == "length"
        assert srv.requests[0]["authorization"] is None


def test_generate_works_inside_a_running_event_loop() -> None:
    with CompletionServer() as srv:
        eng = engine(srv)

        async def main():
            return eng.generate(["a"], SamplingParams(n=1, max_tokens=2))

        assert asyncio.run(main())[0][0].finish_reason == "length"


def test_too_long_prompt_is_skipped_with_the_reason_every_engine_gives(tmp_path) -> None:
    """Known context + local tokenizer: the shared rule, no request; else the server's context 400 is a skip."""
    from transformers import AutoTokenizer

    from prmforge.engines.base import PROMPT_TOO_LONG, skip_reason
    from prmforge.engines.tiny import build_tiny_qwen2

    model = build_tiny_qwen2(tmp_path / "m", layers=1)
    tok = AutoTokenizer.from_pretrained(model)
    short, long = "Tom has 3 apples.", "Tom has 3 apples and buys 5 more. " * 8
    n_short, n_long = (len(tok(p)["input_ids"]) for p in (short, long))
    context = n_short + 8
    assert n_long + 8 > context
    params = SamplingParams(n=2, max_tokens=8)
    with CompletionServer() as srv:
        counted = engine(srv, tokenizer=str(model), max_model_len=context).generate([short, long], params)
        assert [c.finish_reason for c in counted[0]] == ["length", "length"]
        assert [(c.finish_reason, c.text, c.prompt_tokens) for c in counted[1]] == [("skipped", "", n_long)] * 2
        assert counted[1][0].error == skip_reason(n_long, 8, context)  # the HF engine's words exactly
        assert srv.attempts(long) == 0  # never sent
        # no local tokenizer: the server's own context error (vLLM's 400) is a skip, not an error, not retried
        srv.scripts = {"overlong": ["context", "ok"]}
        refused = engine(srv).generate(["overlong", short], params)
        assert [c.finish_reason for c in refused[0]] == ["skipped", "skipped"]
        assert refused[0][0].error.startswith(PROMPT_TOO_LONG) and "maximum context length is 64" in refused[0][0].error
        assert srv.attempts("overlong") == 1 and refused[1][0].finish_reason == "length"
        # the factory passes the tokenizer and context through
        cfg = EngineConfig(backend="openai", model="tiny", base_url=srv.base_url, tokenizer=str(model),
                           max_model_len=context)
        assert make_engine(cfg).generate([long], params)[0][0].error == skip_reason(n_long, 8, context)


def test_chat_endpoint_sends_each_prompt_as_one_user_message(tmp_path) -> None:
    """``chat_endpoint``: /v1/chat/completions, the prompt as the user message (the server applies the template);
    a local tokenizer counts the templated prompt, which is what the server runs."""
    from transformers import AutoTokenizer

    from prmforge.engines.base import skip_reason
    from prmforge.engines.tiny import build_tiny_qwen2
    from prmforge.prompts import apply_chat

    params = SamplingParams(n=2, max_tokens=6, seed=4)
    with CompletionServer() as srv:
        out = engine(srv, chat_endpoint=True).generate(["one two"], params)
        assert [c.text for c in out[0]] == [" ".join(fake_text("one two", 4, i, 6)[:6]) for i in range(2)]
        assert srv.requests[0]["messages"] == [{"role": "user", "content": "one two"}]
        assert "prompt" not in srv.requests[0] and srv.requests[0]["n"] == 2
        model = build_tiny_qwen2(tmp_path / "m", layers=1)
        tok = AutoTokenizer.from_pretrained(model)
        n_raw, n_chat = len(tok("Tom has 3 apples.")["input_ids"]), len(tok(apply_chat(tok, "Tom has 3 apples."))["input_ids"])
        context = n_raw + 6  # the bare prompt would fit; the templated one the server runs does not
        assert n_chat + 6 > context
        skipped = engine(srv, chat_endpoint=True, tokenizer=str(model), max_model_len=context).generate(
            ["Tom has 3 apples."], params)
        assert [(c.finish_reason, c.prompt_tokens) for c in skipped[0]] == [("skipped", n_chat)] * 2
        assert skipped[0][0].error == skip_reason(n_chat, 6, context) and srv.attempts("Tom has 3 apples.") == 0
    plain = EngineConfig(backend="openai", model="m")
    assert "chat_endpoint" not in plain.identity()  # run keys of completion-endpoint engines are unchanged
    assert EngineConfig(backend="openai", model="m", chat_endpoint=True).identity()["chat_endpoint"] is True
