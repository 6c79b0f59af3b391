"""The serve stage's loopback plumbing, with real sockets and processes.

13. A port left in TIME_WAIT by the previous server is free (SO_REUSEADDR), and a health answer
    counts only when it comes from the started server: alive, and owner of the listening socket.
14. With HTTP_PROXY (and friends) pointing at a dead port and no NO_PROXY, the health check, the
    warm-up and GuideLLM's load to 127.0.0.1 still reach the local server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from evals import load
from pipelines.engines.process import (
    EngineStartError,
    PortTakenError,
    ServerProcess,
    check_port_free,
    free_port,
    listener_owned_by,
    running_server,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _health_server(folder: Path, port: int) -> list[str]:
    """A real HTTP server process whose /health answers 200."""
    (folder / "health").write_text("ok")
    return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(folder), str(port)]


def _dead_port() -> int:
    """A port nothing listens on: connecting to it is refused at once."""
    return free_port()


@pytest.fixture
def dead_proxy(monkeypatch) -> str:
    """Every proxy variable points at a dead port; no NO_PROXY: loopback traffic must not use them."""
    proxy = f"http://127.0.0.1:{_dead_port()}"
    for var in PROXY_VARS:
        monkeypatch.setenv(var, proxy)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    return proxy


# --- item 13: TIME_WAIT is not "in use"; the responder is the started server ------------------------


def _port_in_time_wait() -> int:
    """A port whose server side closed first, so its socket sits in TIME_WAIT (as after a stopped server)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server closes first: its end goes to TIME_WAIT
        time.sleep(0.1)
        client.close()
    with socket.socket() as plain:  # what the old check did: refused while TIME_WAIT lasts
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    return port


def test_a_port_in_time_wait_is_free_and_a_server_starts_on_it(tmp_path):
    port = _port_in_time_wait()
    check_port_free(port)
    with running_server(_health_server(tmp_path, port), port, tmp_path / "server.log", "/health", 30) as srv:
        assert listener_owned_by(port, srv.pid) is True


def test_a_port_something_listens_on_is_still_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(PortTakenError, match="already in use"):
            check_port_free(s.getsockname()[1])


class _Answers200(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_a_health_answer_from_another_process_is_refused(tmp_path):
    """The started server never binds its port; an impostor answers there: not this server's health."""
    port = free_port()
    server = ServerProcess([sys.executable, "-c", "import time; time.sleep(60)"], port, tmp_path / "server.log")
    server.start()
    impostor = ThreadingHTTPServer(("127.0.0.1", port), _Answers200)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EngineStartError, match=rf"belongs to pid {os.getpid()}, not to the started server"):
            server.wait_healthy("/health", 10)
    finally:
        impostor.shutdown()
        impostor.server_close()
        server.stop()


# --- item 14: loopback traffic bypasses HTTP(S)_PROXY ------------------------------------------------


def test_the_health_check_reaches_127_0_0_1_despite_a_dead_proxy(tmp_path, dead_proxy):
    port = free_port()
    with running_server(_health_server(tmp_path, port), port, tmp_path / "server.log", "/health", 15) as srv:
        assert srv.startup_s < 15


def test_loopback_hosts_are_added_to_no_proxy_keeping_the_users_entries():
    env = {"no_proxy": "example.com, .corp", "NO_PROXY": "example.com"}
    value = load.bypass_proxy_for_loopback(env)
    assert env["NO_PROXY"] == env["no_proxy"] == value == "example.com,.corp,127.0.0.1,localhost,::1"
    assert load.bypass_proxy_for_loopback(env) == value  # idempotent


class _FakeOpenAI(BaseHTTPRequestHandler):
    """Just enough of an OpenAI-compatible server for GuideLLM: /health, /v1/models, streamed completions."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802
        self.seen.append(self.path)
        body = json.dumps({"data": [{"id": "tiny"}]}).encode() if self.path == "/v1/models" else b"ok"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.seen.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(4):
            self.wfile.write(f'data: {json.dumps({"id": "r", "choices": [{"text": f" w{i}"}]})}\n\n'.encode())
            self.wfile.flush()
        usage = {"id": "r", "choices": [], "usage": {"prompt_tokens": 16, "completion_tokens": 4}}
        self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args):
        pass


LEVEL_SCRIPT = """
import json, sys
from pathlib import Path
from evals.load import LoadError, LoadSpec, run_level, warm_up
spec = LoadSpec(**json.loads(sys.argv[1]))
out = {}
try:
    warm_up(spec.base_url, spec.model_name, spec.request_format, 1)
    out["warm_up"] = "ok"
except Exception as exc:
    out["warm_up"] = f"{type(exc).__name__}: {exc}"[:500]
try:
    out["level"] = run_level(spec, 1, Path(sys.argv[2]))
except LoadError as exc:
    out["level"] = {"load_error": str(exc)}
print(json.dumps(out))
"""


def test_warm_up_and_guidellm_load_reach_127_0_0_1_despite_a_dead_proxy(tmp_path, tiny_tokenizer_dir, dead_proxy):
    """A real GuideLLM level, in a fresh interpreter as in a sweep's worker, with every proxy variable
    pointing at a dead port: the requests arrive at the local server and the level is measured."""
    import dataclasses

    _FakeOpenAI.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    spec = load.LoadSpec(base_url=base_url, model_name="tiny", tokenizer_dir=str(tiny_tokenizer_dir),
                         request_format="/v1/completions", prompt_tokens=16, prompt_tokens_stdev=2,
                         output_tokens=4, output_tokens_stdev=1, exact_output_lengths=True, requests=2,
                         max_seconds=30)
    try:
        proc = subprocess.run([sys.executable, "-c", LEVEL_SCRIPT, json.dumps(dataclasses.asdict(spec)),
                               str(tmp_path / "level.json")], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=240, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["warm_up"] == "ok", out["warm_up"]
    level = out["level"]
    assert "load_error" not in level, level
    assert _FakeOpenAI.seen.count("/v1/completions") >= 3, _FakeOpenAI.seen  # the warm-up and the level's 2
    assert level["requests_ok"] == 2 and level["errors"] == 0, level
