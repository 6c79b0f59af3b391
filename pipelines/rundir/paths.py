"""Paths of run directories: the runs root, one model's folder, one scheme's files.

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


def model_dir(model: str) -> Path:
    return runs_root() / model


def scheme_dir(model: str, scheme: str) -> SchemeDir:
    return SchemeDir(model_dir(model) / scheme)
