"""Helpers shared by tests: run qeval in-process or in a fresh interpreter."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_qeval(*args: str, env: dict | None = None, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run the qeval CLI in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


RELOAD_SCRIPT = r"""
import json, sys, torch
from pipelines.quantizers import get_quantizer
key, checkpoint, dtype = sys.argv[1:4]
model = get_quantizer(key).load(checkpoint, "cpu", dtype)
ids = torch.arange(1, 33).unsqueeze(0)
with torch.inference_mode():
    logits = model(ids).logits
print(json.dumps({"finite": bool(torch.isfinite(logits).all()), "shape": list(logits.shape),
                  "class": type(model).__name__}))
"""


def reload_in_fresh_process(quantizer_key: str, checkpoint: str, dtype: str = "float32") -> dict:
    """Load a checkpoint in a new interpreter (nothing cached in memory) and run a forward."""
    import json

    out = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, quantizer_key, checkpoint, dtype],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "GPTQMODEL_CPU_WORKERS": str(os.cpu_count() or 1)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


MLFLOW_BIN = Path(sys.executable).parent / "mlflow"
HEALTH_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """One `mlflow server` process on a fixed store and port, started in its own process group."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            str(MLFLOW_BIN), "server",
            "--backend-store-uri", f"sqlite:///{self.root / 's.db'}",
            "--serve-artifacts", "--artifacts-destination", str(self.root / "art"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        log_file = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        log_file.close()
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {HEALTH_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        # Workers of the group may outlive the leader briefly; the port must be free before a restart.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.2)
