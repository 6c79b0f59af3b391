"""The per-scheme manifest: which stages ran, with which key, and what they wrote.

Several processes write one manifest: a stage worker, the tracking code, the Ray crash
handler, a second sweep of the same model. Every change is a read-modify-write under a file
lock (``manifest.json.lock`` beside it): the file is re-read under the lock, changed, and
written atomically, so no writer loses another's update.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.rundir.atomic import read_json, write_json_atomic
from pipelines.rundir.paths import SchemeDir

# A lock is held for one read and one small write; waiting longer means a stuck writer.
LOCK_TIMEOUT_S = 120.0


def file_lock(path: Path, timeout_s: float = LOCK_TIMEOUT_S):
    """An inter-process lock on ``<path>.lock`` (the lock file stays; the OS frees it on exit)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=timeout_s)


@contextlib.contextmanager
def locked_json(path: Path, default: Callable[[], dict[str, Any]] = dict) -> Iterator[dict[str, Any]]:
    """Read ``path`` under its lock, yield the dict to change, write it back on success."""
    with file_lock(path):
        data = read_json(path) if path.is_file() else default()
        yield data
        write_json_atomic(path, data)


def update_json(path: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``change`` to the JSON object at ``path`` under its lock; return the result."""
    with locked_json(path) as data:
        change(data)
    return data


class Manifest:
    """The per-scheme record of which stages ran, with which key, and what they wrote.

    ``data`` is a snapshot taken when the object was made (and refreshed by every write
    through this object); the methods that write re-read the file under the lock first.
    """

    def __init__(self, sdir: SchemeDir):
        self.sdir = sdir
        self.data: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        data = read_json(self.sdir.manifest_path) if self.sdir.manifest_path.exists() else {}
        data.setdefault("stages", {})
        return data

    def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Re-read the manifest under its lock, apply ``change`` to it, write it back."""
        with file_lock(self.sdir.manifest_path):
            self.data = self._read()
            change(self.data)
            write_json_atomic(self.sdir.manifest_path, self.data)

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def is_done(self, name: str, key: str) -> bool:
        entry = self.stage(name)
        if entry.get("status") != "done" or entry.get("key") != key:
            return False
        # A finished entry whose outputs were deleted by hand is not finished.
        return all((self.sdir.root / out).exists() for out in entry.get("outputs", []))

    def start(self, name: str, key: str) -> None:
        def change(data):
            data["stages"][name] = {"status": "running", "key": key, "started_at": time.time()}

        self.update(change)

    def finish(self, name: str, outputs: list[Path], duration_s: float, **extra: Any) -> None:
        def change(data):
            entry = data["stages"].setdefault(name, {})
            entry.update(
                status="done",
                finished_at=time.time(),
                duration_s=round(duration_s, 3),
                outputs=[str(Path(o).relative_to(self.sdir.root)) for o in outputs],
                **extra,
            )
            entry.pop("error", None)

        self.update(change)

    def fail(self, name: str, error: str, status: str = "failed") -> None:
        def change(data):
            data["stages"].setdefault(name, {}).update(status=status, error=error, finished_at=time.time())

        self.update(change)

    def set(self, key: str, value: Any) -> None:
        def change(data):
            data[key] = value

        self.update(change)
