"""The per-scheme manifest: which stages ran, with which key, and what they wrote."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipelines.rundir.atomic import read_json, write_json_atomic
from pipelines.rundir.paths import SchemeDir


class Manifest:
    """The per-scheme record of which stages ran, with which key, and what they wrote."""

    def __init__(self, sdir: SchemeDir):
        self.sdir = sdir
        self.data: dict[str, Any] = {"stages": {}}
        if sdir.manifest_path.exists():
            self.data = read_json(sdir.manifest_path)
            self.data.setdefault("stages", {})

    def save(self) -> None:
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
        self.data["stages"][name] = {"status": "running", "key": key, "started_at": time.time()}
        self.save()

    def finish(self, name: str, outputs: list[Path], duration_s: float, **extra: Any) -> None:
        entry = self.data["stages"][name]
        entry.update(
            status="done",
            finished_at=time.time(),
            duration_s=round(duration_s, 3),
            outputs=[str(Path(o).relative_to(self.sdir.root)) for o in outputs],
            **extra,
        )
        entry.pop("error", None)
        self.save()

    def fail(self, name: str, error: str, status: str = "failed") -> None:
        entry = self.data["stages"].setdefault(name, {})
        entry.update(status=status, error=error, finished_at=time.time())
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()
