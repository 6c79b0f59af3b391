"""One OpenAI-compatible server process: start on 127.0.0.1, wait until healthy, stop by pid.

The server runs in its own process group (so stopping it also stops any children it forks),
and is told by the kernel to die with the process that started it (PR_SET_PDEATHSIG), so a
stage killed with SIGKILL does not leave a server behind. A normal exit, an exception or a
KeyboardInterrupt stop it through the context manager.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import QevalError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
LOG_TAIL_CHARS = 3000


class EngineStartError(RuntimeError):
    """The server did not become healthy (it exited, or the timeout passed); carries the log tail."""


class PortTakenError(QevalError):
    """The requested port is already in use on 127.0.0.1 (bad input: pick another or free it)."""


def free_port() -> int:
    """A port the kernel reports free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> None:
    """Raise PortTakenError when something already listens on (or holds) ``port``."""
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise PortTakenError(
                f"port {port} on {HOST} is already in use ({exc.strerror}). Stop what listens there, "
                "or leave the port unset so qeval picks a free one."
            ) from None


def _die_with_parent() -> None:
    """In the child, before exec: own process group, and SIGKILL when the parent dies."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log_tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return text[-chars:].strip() or "(the server log is empty)"


@dataclass
class ServerProcess:
    """A started server: its pid, base URL and log file."""

    command: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        check_port_free(self.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting server: %s (log %s)", " ".join(self.command), self.log_path)
        with open(self.log_path, "wb") as out:
            try:
                self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env={**os.environ, **self.env},
                                             preexec_fn=_die_with_parent)
            except FileNotFoundError as exc:
                raise EngineStartError(f"cannot start {self.command[0]}: {exc}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_healthy(self, health_path: str, timeout_s: float) -> float:
        """Poll ``health_path`` until it answers 200; return the seconds it took."""
        import requests

        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise EngineStartError(f"the server exited with code {code} before it was healthy. "
                                       f"Log tail ({self.log_path}):\n{log_tail(self.log_path)}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.base_url + health_path, timeout=2).status_code == 200:
                    return time.perf_counter() - start
            time.sleep(0.5)
        raise EngineStartError(f"the server was not healthy at {self.base_url}{health_path} within "
                               f"{timeout_s:.0f} s. Log tail ({self.log_path}):\n{log_tail(self.log_path)}")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left; reap the pid."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.info("server pid %d stopped (exit %s)", self.proc.pid, self.proc.returncode)


@contextlib.contextmanager
def running_server(command: list[str], port: int, log_path: Path, health_path: str, timeout_s: float,
                   env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Start a server, wait until healthy, yield it, and stop it whatever happens."""
    server = ServerProcess(command, port, log_path, env or {})
    try:
        server.start()
        server.startup_s = server.wait_healthy(health_path, timeout_s)
        yield server
    finally:  # also on KeyboardInterrupt and on a failed start
        server.stop()
