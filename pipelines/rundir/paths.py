"""Paths of run directories: the runs root, one model's folder, one scheme's files (layout: see the package docstring)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.environment import PROJECT_ROOT  # noqa: F401  (defined at rank 0; re-exported here)

log = logging.getLogger(__name__)


def runs_root() -> Path:
    """Return the root of all run directories (``QEVAL_RUNS_DIR`` or ``./runs``)."""
    return Path(os.environ.get("QEVAL_RUNS_DIR", "runs")).resolve()


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

    @property
    def serve_dir(self) -> Path:
        return self.root / "serve"


def model_dir(model: str) -> Path:
    return runs_root() / model


def scheme_dir(model: str, scheme: str) -> SchemeDir:
    return SchemeDir(model_dir(model) / scheme)
