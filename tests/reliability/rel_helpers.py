"""Fault-injection helpers of the reliability suite (real processes, real servers, loopback only)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEED = 20261130  # every random choice of the suite derives from this


def rng(name: str) -> random.Random:
    """A seeded generator per test, so each test's random points are reproducible."""
    return random.Random(f"{SEED}:{name}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"})
    env.update(extra)
    return env


# ---------------------------------------------------------------------------
# kill -9 at random points
# ---------------------------------------------------------------------------
@dataclass
class CrashLog:
    kill_points: list[int] = field(default_factory=list)  # progress seen right after each kill
    delays_ms: list[int] = field(default_factory=list)
    resumed_runs: int = 0


def run_to_end(cmd: list[str], env: dict, timeout: float = 300) -> dict:
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def kill_at_random_points(cmd: list[str], env: dict, progress: Callable[[], int], total: int, kills: int,
                          gen: random.Random, first_delay_s: float = 0.02, timeout: float = 240) -> CrashLog:
    """Start ``cmd`` again and again, SIGKILL it at ``kills`` seeded random points.

    A point is "progress reached a random target, then a random share of one
    unit of work more" (so kills land between and inside units). Targets are
    odd numbers drawn from ``1..total-2``, two apart, so a kill that lands one
    unit late never runs into the next target or the end. The length of a
    unit is measured from the progress seen (the fastest one observed), so
    the extra delay stays inside the next unit on a fast or a loaded machine.
    """
    choices = list(range(1, total - 1, 2))
    assert len(choices) >= kills, f"need {kills} odd targets below {total - 1}, have {len(choices)}"
    targets = sorted(gen.sample(choices, kills))
    log = CrashLog()
    unit_s: float | None = None
    deadline = time.monotonic() + timeout
    for target in targets:
        target = max(target, progress() + 1)
        assert target < total, f"progress already at {progress()} of {total}"
        share = gen.uniform(0.0, 0.8)
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            last_p, last_t = progress(), None
            while (p := progress()) < target:
                if p != last_p:
                    now = time.monotonic()
                    if last_t is not None:
                        step = (now - last_t) / (p - last_p)
                        unit_s = step if unit_s is None else min(unit_s, step)
                    last_p, last_t = p, now
                if proc.poll() is not None:
                    raise AssertionError(f"process ended rc={proc.returncode} before progress {target}: "
                                         f"{proc.stderr.read().decode()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError("timed out waiting for progress")
                time.sleep(0.002)
            delay = share * (unit_s if unit_s is not None else first_delay_s)
            time.sleep(delay)
            assert proc.poll() is None, f"process finished before the kill at {target}+{delay:.3f}s"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        log.kill_points.append(progress())
        log.delays_ms.append(round(delay * 1000))
    return log


def count_files(root: Path, prefix: str = "shard-", suffix: str = ".parquet") -> int:
    if not root.is_dir():
        return 0
    return sum(1 for p in root.rglob(f"{prefix}*{suffix}"))


# ---------------------------------------------------------------------------
# a restartable moto S3 server of one test's own
# ---------------------------------------------------------------------------
class OwnS3Server:
    """A moto S3 server on its own 127.0.0.1 port that a test stops and restarts.

    Moto keeps its state in the process, so objects written before a stop are
    there again after the restart, like a real object store coming back.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        for _ in range(100):
            if port_open(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError("moto did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None


class CutRelay:
    """A TCP relay on 127.0.0.1 in front of a server; it can cut the line in the middle of a request.

    ``arm(after_bytes, on_cut)``: once that many more client->server bytes
    have been forwarded, the relay stops forwarding (the request is now
    provably half sent) and calls ``on_cut`` (which stops the server); then
    every connection is closed. Clients point at ``endpoint``.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.forwarded = 0
        self.cut_at: int | None = None
        self._limit: int | None = None
        self._on_cut: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.cut = threading.Event()

    def start(self) -> None:
        self.cut.clear()
        self._limit = None
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def arm(self, after_bytes: int, on_cut: Callable[[], None]) -> None:
        with self._lock:
            self._limit = self.forwarded + after_bytes
            self._on_cut = on_cut

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, up]
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not self.cut.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    with self._lock:
                        if self._limit is not None and self.forwarded + len(data) >= self._limit:
                            keep = max(0, self._limit - self.forwarded)
                            dst.sendall(data[:keep])
                            self.forwarded += keep
                            self.cut_at = self.forwarded
                            self._limit = None
                            fire = self._on_cut
                        else:
                            fire = None
                            dst.sendall(data)
                            self.forwarded += len(data)
                    if fire is not None:
                        self.cut.set()
                        fire()
                        self.close()
                        return
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.cut.set()
        with self._lock:
            socks, self._socks = self._socks, []
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


# ---------------------------------------------------------------------------
# a loopback OpenAI-compatible server with a programmable brain and faults
# ---------------------------------------------------------------------------
class LoopbackLLM:
    """``/v1/completions`` and ``/v1/chat/completions`` on 127.0.0.1: ``respond(prompt, index) -> text``
    (a chat request's prompt is its last message); faults scripted per prompt.

    ``faults[match] = ["timeout", "500", "garbage", ...]``: requests whose
    prompt contains ``match`` play the script one entry per request, then
    answer normally. ``always[match] = action`` fails every such request.
    Every request is recorded (with its headers) for the tests to inspect.
    """

    def __init__(self, respond: Callable[[str, int], str], timeout_sleep_s: float = 1.0) -> None:
        self.respond = respond
        self.timeout_sleep_s = timeout_sleep_s
        self.faults: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.requests: list[dict] = []
        self.served: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server._handle(self, raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _action(self, prompt: str) -> str:
        with self._lock:
            for match, action in self.always.items():
                if match in prompt:
                    return action
            for match, script in self.faults.items():
                if match in prompt and script:
                    return script.pop(0)
        return "ok"

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _handle(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        req = json.loads(raw)
        chat = h.path.endswith("/chat/completions")
        prompt = req["messages"][-1]["content"] if chat else req["prompt"]
        action = self._action(prompt)
        with self._lock:
            self.requests.append({"prompt": prompt, "action": action, "headers": dict(h.headers),
                                  "endpoint": "chat" if chat else "completions"})
            self.served[action] = self.served.get(action, 0) + 1
        if action == "timeout":
            time.sleep(self.timeout_sleep_s)
            return self._send(h, 200, b"{}")
        if action.isdigit():
            return self._send(h, int(action), json.dumps({"error": f"injected {action}"}).encode())
        if action == "echo":  # a 500 whose body repeats the caller's credentials
            body = json.dumps({"error": f"upstream rejected {h.headers.get('Authorization')}"}).encode()
            return self._send(h, 500, body)
        if action == "garbage":
            return self._send(h, 200, b"<html>502 bad gateway</html>")
        if action == "truncated":
            return self._send(h, 200, b'{"choices": [{"index": 0, "te')
        n = int(req.get("n", 1))
        texts = [self.respond(prompt, i) for i in range(n)]
        choices = [{"index": i, **({"message": {"role": "assistant", "content": t}} if chat else {"text": t}),
                    "finish_reason": "stop"} for i, t in enumerate(texts)]
        body = {"object": "text_completion", "model": req.get("model", ""), "choices": choices,
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 5 * n}}
        return self._send(h, 200, json.dumps(body).encode())


# ---------------------------------------------------------------------------
# a real MLflow tracking server (MLflow's own server app) on loopback
# ---------------------------------------------------------------------------
class MLflowTrackingServer:
    """MLflow's tracking server app on 127.0.0.1 in a child process, sqlite-backed; killed and restarted.

    It is the same WSGI app ``mlflow server`` runs, served by werkzeug in one
    process: that skips the 30-60 s worker start of ``mlflow server`` on a
    loaded 2-core machine. ``stop`` is a SIGKILL, so open keep-alive
    connections die with it, as in a real crash.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        import urllib.request

        self.workdir.mkdir(parents=True, exist_ok=True)
        db = f"sqlite:///{self.workdir / 'mlflow.db'}"
        env = child_env(_MLFLOW_SERVER_FILE_STORE=db, _MLFLOW_SERVER_REGISTRY_STORE=db,
                        _MLFLOW_SERVER_ARTIFACT_ROOT=(self.workdir / "artifacts").as_uri(),
                        _MLFLOW_SERVER_SERVE_ARTIFACTS="false")
        code = ("from mlflow.server import app\nfrom werkzeug.serving import make_server\n"
                f"make_server('127.0.0.1', {self.port}, app, threaded=True).serve_forever()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=self.workdir, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"MLflow server exited rc={self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("MLflow server did not become healthy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
