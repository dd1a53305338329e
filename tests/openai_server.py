"""A real OpenAI-compatible ``/v1/completions`` server on 127.0.0.1 for tests.

It answers ``/v1/chat/completions`` too, reading the last message as the prompt.

It serves deterministic text (a function of prompt, seed and choice index),
applies stop strings and max_tokens like a real server, and can be told to
misbehave for a given prompt: a script of responses (``"429"``, ``"500"``,
``"400"``, ``"context"`` (vLLM's 400 for a prompt over the context), ``"timeout"``,
``"garbage"``, ``"ok"``) played one per request.
It records every request and the peak number of requests in flight.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def fake_text(prompt: str, seed: int, index: int, max_tokens: int) -> list[str]:
    """Deterministic 'tokens' (words) for one choice."""
    words = [f"w{(sum(map(ord, prompt)) + 7 * seed + 13 * index + k) % 97}" for k in range(max_tokens + 5)]
    words[3] = "STOP"  # a stop string the tests can use
    return words


class CompletionServer:
    def __init__(self, api_key: str | None = None, delay_s: float = 0.0, timeout_sleep_s: float = 2.0) -> None:
        self.api_key = api_key
        self.delay_s = delay_s
        self.timeout_sleep_s = timeout_sleep_s
        self.scripts: dict[str, list[str]] = {}
        self.requests: list[dict] = []
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with server._lock:
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    server._handle(self, raw)
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CompletionServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def attempts(self, prompt: str) -> int:
        return sum(1 for r in self.requests if prompt in (r.get("prompt"), (r.get("messages") or [{}])[-1].get("content")))

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _handle(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        if h.path not in ("/v1/completions", "/v1/chat/completions"):
            return self._send(h, 404, b'{"error": "not found"}')
        chat = h.path == "/v1/chat/completions"
        auth = h.headers.get("Authorization")
        try:
            req = json.loads(raw)
        except ValueError:
            return self._send(h, 400, b'{"error": "bad json"}')
        with self._lock:
            self.requests.append({**req, "authorization": auth})
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            # echo the header back, like some proxies do: the client must scrub it
            return self._send(h, 401, json.dumps({"error": f"bad credentials {auth}"}).encode())
        prompt = req["messages"][-1]["content"] if chat else req["prompt"]
        script = self.scripts.get(prompt)
        action = script.pop(0) if script else "ok"
        if self.delay_s:
            time.sleep(self.delay_s)
        if action == "timeout":
            time.sleep(self.timeout_sleep_s)
            return self._send(h, 200, b"{}")
        if action in {"429", "500", "503", "400"}:
            headers = {"Retry-After": "0.05"} if action == "429" else None
            return self._send(h, int(action), json.dumps({"error": action}).encode(), headers)
        if action == "context":  # vLLM 0.32's words and body for a prompt over max_model_len
            msg = ("This model's maximum context length is 64 tokens. However, your prompt contains 80 input "
                   "tokens, which exceeds this limit even without any output tokens. Please reduce the length "
                   "of the input prompt.")
            body = {"error": {"message": msg, "type": "BadRequestError", "param": "input_tokens", "code": 400}}
            return self._send(h, 400, json.dumps(body).encode())
        if action == "garbage":
            return self._send(h, 200, b"<html>not json")
        n, max_tokens, seed = int(req.get("n", 1)), int(req["max_tokens"]), int(req.get("seed", 0))
        stops = req.get("stop") or []
        choices, total = [], 0
        for i in range(n):
            words = fake_text(prompt, seed, i, max_tokens)
            out, reason = [], "length"
            for w in words[:max_tokens]:
                out.append(w)
                if w in stops:
                    out.pop()
                    reason = "stop"
                    break
            total += len(out) + (1 if reason == "stop" else 0)
            text = " ".join(out)
            choices.append({"index": i, **({"message": {"role": "assistant", "content": text}} if chat else
                                            {"text": text}), "finish_reason": reason})
        body = {"object": "chat.completion" if chat else "text_completion", "model": req["model"],
                "choices": choices[::-1],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": total}}
        return self._send(h, 200, json.dumps(body).encode())
