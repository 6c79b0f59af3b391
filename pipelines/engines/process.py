"""One OpenAI-compatible server process: start on 127.0.0.1, wait until healthy, stop by pid.

The server runs in its own process group (so stopping it also stops any children it forks),
and is told by the kernel to die with the process that started it (PR_SET_PDEATHSIG), so a
stage killed with SIGKILL does not leave a server behind. A normal exit, an exception or a
KeyboardInterrupt stop it through the context manager.

The port check binds with SO_REUSEADDR, as the servers themselves do: a port left in TIME_WAIT
by the previous server is free, one that something listens on is not.

The health check is loopback traffic and never goes through HTTP(S)_PROXY (a proxy-free
session). A 200 counts only when it came from the started server: the
started pid must still be alive after the answer, and, where Linux's /proc shows it, the socket
that listens on the port must belong to the started process or one of its children (its
process group or descendants). A listener owned by any other process is an EngineStartError
naming it; where /proc cannot tell (another OS, a hidden /proc), only the pid check applies.
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
    """Raise PortTakenError when something already listens on (or holds) ``port``.

    SO_REUSEADDR, as the servers set it themselves: a connection of an earlier server still in
    TIME_WAIT does not make the port taken (the server would bind it), a listener still does.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise PortTakenError(
                f"port {port} on {HOST} is already in use ({exc.strerror}). Stop what listens there, "
                "or leave the port unset so qeval picks a free one."
            ) from None


def loopback_session():
    """A requests session that ignores HTTP(S)_PROXY, ALL_PROXY and .netrc: for 127.0.0.1 only."""
    import requests

    session = requests.Session()
    session.trust_env = False
    return session


def _listening_inodes(port: int) -> set[int] | None:
    """Inodes of the TCP sockets in LISTEN state on ``port`` (any address, IPv4 and IPv6); None: unreadable."""
    inodes: set[int] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            # sl local_address rem_address st ... inode (field 9); st 0A is LISTEN
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes if readable else None


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, process group) of every process /proc shows."""
    out: dict[int, tuple[int, int]] = {}
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return out
    for pid in entries:
        try:
            stat = Path("/proc", pid, "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            out[int(pid)] = (int(fields[1]), int(fields[2]))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        fds = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return out
    for fd in fds:
        with contextlib.suppress(OSError, ValueError):
            target = os.readlink(fd.path)
            if target.startswith("socket:["):
                out.add(int(target[len("socket:["):-1]))
    return out


def _family(pid: int, processes: dict[int, tuple[int, int]]) -> set[int]:
    """``pid``, the members of its process group, and its descendants."""
    family = {pid} | {p for p, (_, pgrp) in processes.items() if pgrp == pid}
    grew = True
    while grew:
        more = {p for p, (ppid, _) in processes.items() if ppid in family and p not in family}
        family |= more
        grew = bool(more)
    return family


def listener_pids(port: int) -> set[int]:
    """The pids (that /proc lets this user see) holding a socket that listens on ``port``."""
    inodes = _listening_inodes(port) or set()
    return {pid for pid in _processes() if inodes & _socket_inodes(pid)} if inodes else set()


def listener_owned_by(port: int, pid: int | None) -> bool | None:
    """True: a socket listening on ``port`` belongs to ``pid`` or its children; False: every listener
    belongs to someone else; None: this machine cannot tell (no /proc, or no listener visible)."""
    if pid is None:
        return False
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    processes = _processes()
    if pid not in processes:
        return None
    return any(inodes & _socket_inodes(member) for member in _family(pid, processes))


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
        """Poll ``health_path`` until the started server answers 200; return the seconds it took.

        No proxy is used (loopback), and the answer must come from the started process (see the
        module docstring): else EngineStartError.
        """
        import requests

        start = time.perf_counter()
        with loopback_session() as session:
            while time.perf_counter() - start < timeout_s:
                if not self.alive():
                    code = self.proc.returncode if self.proc else None
                    raise EngineStartError(f"the server exited with code {code} before it was healthy. "
                                           f"Log tail ({self.log_path}):\n{log_tail(self.log_path)}")
                with contextlib.suppress(requests.RequestException):
                    if session.get(self.base_url + health_path, timeout=2).status_code == 200:
                        self.confirm_responder(health_path)
                        return time.perf_counter() - start
                time.sleep(0.5)
        raise EngineStartError(f"the server was not healthy at {self.base_url}{health_path} within "
                               f"{timeout_s:.0f} s. Log tail ({self.log_path}):\n{log_tail(self.log_path)}")

    def confirm_responder(self, health_path: str) -> None:
        """Raise EngineStartError unless the server that answered is the started one (alive; owns the port)."""
        where = f"{self.base_url}{health_path}"
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise EngineStartError(f"{where} answered, but the started server (pid {self.pid}) exited with code "
                                   f"{code}: something else serves port {self.port}. Log tail ({self.log_path}):\n"
                                   f"{log_tail(self.log_path)}")
        owned = listener_owned_by(self.port, self.pid)
        if owned is False:
            others = sorted(listener_pids(self.port))
            who = f"pid {', '.join(map(str, others))}" if others else "another process"
            raise EngineStartError(f"{where} answered, but the socket listening on port {self.port} belongs to "
                                   f"{who}, not to the started server (pid {self.pid}): its numbers would not be "
                                   "this scheme's. Stop that process, or leave serve.port unset so qeval picks a "
                                   "free port.")
        if owned is None:
            log.debug("port %d: the listening socket's owner cannot be read here; the started pid %s is alive",
                      self.port, self.pid)

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
