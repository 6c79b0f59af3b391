"""Run directories: paths, the manifest, atomic writes and stage keys.

Layout under the runs root (``QEVAL_RUNS_DIR``, default ``./runs``)::

    runs/<model>/sweep.json                 sweep-level record (parent MLflow run)
    runs/<model>/signoff.{json,md,html}     the sign-off report
    runs/<model>/<scheme>/manifest.json     status, key, timing and outputs per stage
    runs/<model>/<scheme>/recipe.yaml       the resolved recipe
    runs/<model>/<scheme>/quantize/         checkpoint (model/), quantize.json, layer_errors.csv
    runs/<model>/<scheme>/eval/             perplexity.json, tasks.json, samples/<task>.jsonl
    runs/<model>/<scheme>/bench/            speed.json, memory.json, profile.json

Every file is written to a temporary name and moved into place with
``os.replace``, and a stage is marked finished in the manifest only after all
its outputs exist, so a killed stage never looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Stages write through rundir; the atomic writer itself lives in evals (imports point one way).
from evals.atomic import write_text_atomic as write_text_atomic

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def runs_root() -> Path:
    """Return the root of all run directories (``QEVAL_RUNS_DIR`` or ``./runs``)."""
    return Path(os.environ.get("QEVAL_RUNS_DIR", "runs")).resolve()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_json_if_readable(path: Path) -> Any | None:
    """The file's JSON, or None when it is absent or unreadable (logged): optional results."""
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s (%s); left out", path, exc)
        return None


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``final`` on success.

    A checkpoint is many files; writing them into a staging directory and
    renaming it at the end means a crash never leaves a half-written
    ``model/`` that a later stage would load.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def stable_hash(obj: Any) -> str:
    """Hash a JSON-able object independently of key order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dir_bytes(path: Path) -> int:
    """Total size in bytes of the regular files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@dataclass(frozen=True)
class SchemeDir:
    """Paths of one scheme's run directory."""

    root: Path

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def quantize_dir(self) -> Path:
        return self.root / "quantize"

    @property
    def checkpoint_dir(self) -> Path:
        return self.quantize_dir / "model"

    @property
    def quantize_json(self) -> Path:
        return self.quantize_dir / "quantize.json"

    @property
    def layer_errors_csv(self) -> Path:
        return self.quantize_dir / "layer_errors.csv"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def bench_dir(self) -> Path:
        return self.root / "bench"


def model_dir(model: str) -> Path:
    return runs_root() / model


def scheme_dir(model: str, scheme: str) -> SchemeDir:
    return SchemeDir(model_dir(model) / scheme)


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
