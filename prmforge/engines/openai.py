"""OpenAI-compatible ``/v1/completions`` backend (vLLM serve, SGLang, TGI, OpenAI).

With ``chat_endpoint`` each prompt goes to ``/v1/chat/completions`` instead, as
the one user message, so the server wraps it in the served model's chat
template (how an LLM judge reaches an instruct model whose tokenizer is not
here); the interface is the same: text prompts in, completions out.

Async with bounded concurrency: every prompt is one request (``n`` samples in
it, so the server shares the prompt's prefill); at most ``max_concurrency``
requests are in flight. Each request has a timeout and is retried with
exponential backoff and jitter on 429, 5xx, timeouts, connection errors and
unparseable bodies (``Retry-After`` is honoured). A prompt that still fails
becomes ``n`` ``Completion(finish_reason="error")`` rows: one bad prompt never
loses a shard. A prompt longer than the model's context is ``skipped`` with
the reason, as on every engine: before any request when the engine knows the
context (``max_model_len``) and has a local ``tokenizer`` to count tokens
(:func:`prmforge.engines.base.skip_reason`, the shared rule), else when the
server refuses it for its length (vLLM's and OpenAI's "maximum context length"
400), never retried. The API key is read from the env var whose *name* is
configured; it is sent only in the ``Authorization`` header and scrubbed from
every error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections.abc import Sequence
from typing import Any

import httpx

from prmforge.engines.base import (
    PROMPT_TOO_LONG,
    Completion,
    Engine,
    SamplingParams,
    skip_reason,
    skipped_completions,
)
from prmforge.env import secret

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


class _TooLong(Exception):
    """The server refused the prompt for its length: skip it, do not retry."""


# How vLLM (and OpenAI) say a request does not fit the model's context.
_CONTEXT_ERRORS = ("maximum context length", "context_length_exceeded")


class OpenAIEngine(Engine):
    """Completions from any OpenAI-compatible server."""

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        tokenizer: str | None = None,
        max_model_len: int | None = None,
        chat_endpoint: bool = False,
    ) -> None:
        if max_concurrency <= 0:
            raise ValueError("max_concurrency must be positive")
        # Counting prompt tokens needs the served model's tokenizer here (a folder, URI or hub id).
        self.max_model_len = max_model_len
        self.tokenizer = None
        if tokenizer and max_model_len:
            from prmforge.prompts import load_tokenizer

            self.tokenizer = load_tokenizer(tokenizer)
        self.model = model
        self.chat_endpoint = chat_endpoint
        self.url = base_url.rstrip("/") + ("/chat/completions" if chat_endpoint else "/completions")
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s

    # ---- secrets -------------------------------------------------------------
    def _key(self) -> str | None:
        return secret(self.api_key_env)

    def _scrub(self, text: str) -> str:
        key = self._key()
        if key:
            text = text.replace(key, "***")
        return text[:500]

    # ---- public API ----------------------------------------------------------
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        coro = self.agenerate(prompts, params)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # Called from inside an event loop: run ours in a helper thread.
        out: list[Any] = []
        err: list[BaseException] = []

        def runner() -> None:
            try:
                out.append(asyncio.run(coro))
            except BaseException as exc:  # pragma: no cover - re-raised below
                err.append(exc)

        t = threading.Thread(target=runner)
        t.start()
        t.join()
        if err:
            raise err[0]
        return out[0]

    async def agenerate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        sem = asyncio.Semaphore(self.max_concurrency)
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), limits=limits, headers=headers) as client:
            tasks = [self._one(client, sem, p, params) for p in prompts]
            return list(await asyncio.gather(*tasks))

    def _local_skip(self, prompt: str, params: SamplingParams) -> list[Completion] | None:
        """The skipped completions of a prompt that cannot fit (known without a request), else None."""
        if self.tokenizer is None:
            return None
        if self.chat_endpoint and getattr(self.tokenizer, "chat_template", None):
            from prmforge.prompts import apply_chat

            prompt = apply_chat(self.tokenizer, prompt)  # what the server will run
        count = len(self.tokenizer(prompt)["input_ids"])
        why = skip_reason(count, params.max_tokens, self.max_model_len)
        return skipped_completions(params.n, count, why) if why is not None else None

    # ---- one prompt ----------------------------------------------------------
    def _body(self, prompt: str, params: SamplingParams) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            **({"messages": [{"role": "user", "content": prompt}]} if self.chat_endpoint else {"prompt": prompt}),
            "n": params.n,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.request_seed,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    async def _one(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, prompt: str,
                   params: SamplingParams) -> list[Completion]:
        local = self._local_skip(prompt, params)
        if local is not None:
            return local
        body = self._body(prompt, params)
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            try:
                async with sem:
                    return await self._request(client, body, params.n)
            except _TooLong as exc:
                return skipped_completions(params.n, 0, f"{PROMPT_TOO_LONG} (the server refused it): {exc}")
            except _Fatal as exc:
                last = str(exc)
                break
            except _Retryable as exc:
                last = str(exc)
                delay = exc.retry_after
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {self._scrub(str(exc)) or 'request failed'}"
                delay = None
            if attempt < self.max_retries:
                backoff = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * random.uniform(0.5, 1.0)
                wait = min(self.backoff_max_s, delay) if delay is not None else backoff
                log.info("completion request failed (%s); retry %d/%d in %.2fs", last, attempt + 1,
                         self.max_retries, wait)
                await asyncio.sleep(wait)
        error = f"after {attempt + 1} attempt(s): {last}"
        return [Completion(text="", finish_reason="error", error=error) for _ in range(params.n)]

    async def _request(self, client: httpx.AsyncClient, body: dict, n: int) -> list[Completion]:
        resp = await client.post(self.url, content=json.dumps(body))
        if resp.status_code != 200:
            msg = f"HTTP {resp.status_code}: {self._scrub(resp.text)}"
            if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
                retry_after = None
                try:
                    retry_after = float(resp.headers.get("retry-after", ""))
                except ValueError:
                    pass
                raise _Retryable(msg, retry_after)
            if resp.status_code == 400 and any(m in resp.text for m in _CONTEXT_ERRORS):
                raise _TooLong(msg)
            raise _Fatal(msg)
        try:
            data = resp.json()
            choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
            texts = [str((c["message"]["content"] or "") if self.chat_endpoint else c["text"]) for c in choices]
            reasons = [c.get("finish_reason") for c in choices]
        except (ValueError, KeyError, TypeError) as exc:
            raise _Retryable(f"unparseable response ({type(exc).__name__}): {self._scrub(resp.text[:200])}") from exc
        if len(texts) != n:
            raise _Retryable(f"server returned {len(texts)} choices, expected {n}")
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        total = int(usage.get("completion_tokens") or 0)
        # The API reports one total; split it evenly (remainder to the first choices).
        per = [total // n + (1 if i < total % n else 0) for i in range(n)]
        return [
            Completion(text=t, prompt_tokens=prompt_tokens, completion_tokens=per[i],
                       finish_reason="length" if r == "length" else "stop")
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
