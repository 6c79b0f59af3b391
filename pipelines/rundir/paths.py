"""Paths of run directories: the runs root, one model's folder, one scheme's files (layout: see the package docstring)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.environment import PROJECT_ROOT  # noqa: F401  (defined at rank 0; re-exported here)
from pipelines.errors import QevalError

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


def run_path(*names: str) -> Path:
    """``runs_root()/name/...``, refused (QevalError) unless it stays strictly under the runs root.

    Each name must be one path component: not empty, not ``.`` or ``..``, no ``/`` or ``\\``,
    no NUL. The check is lexical (a symlink the user made inside the runs root, e.g. to a larger
    disk, is followed as before); recipe names are held to a stricter pattern at planning
    (``SAFE_NAME``), this is the last guard before anything is written or deleted.
    """
    root = runs_root()
    for name in names:
        if (not isinstance(name, str) or name in ("", ".", "..")
                or any(c in name for c in ("/", "\\", "\0"))):
            raise QevalError(
                f"run directory name {name!r} is not one folder name: the run path would leave the runs root "
                f"{root}. Use a model or scheme name made of letters, digits, '.', '_' and '-' (no '/', no '..')."
            )
    path = Path(os.path.normpath(root.joinpath(*names)))
    if path == root or root not in path.parents or len(path.relative_to(root).parts) != len(names):
        raise QevalError(f"run path {path} is not under the runs root {root} (names {list(names)!r}). "
                         "Use model and scheme names made of letters, digits, '.', '_' and '-'.")
    return path


# A recipe name (model, scheme or suite) becomes a folder under the runs root: one safe path
# component that starts with a letter or digit, with no '..' in it.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAME_CHARS = 128
NAME_RULE = (f"a letter or digit, then letters, digits, '.', '_' or '-' (no '/', no '..', at most "
             f"{MAX_NAME_CHARS} characters)")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a recipe (its run directory), or None when it can."""
    if not isinstance(name, str):
        return f"a recipe name must be text, not {type(name).__name__}"
    if len(name) > MAX_NAME_CHARS:
        return f"name {name[:40]!r}... is {len(name)} characters long, over {MAX_NAME_CHARS}"
    if not SAFE_NAME.match(name) or ".." in name:
        return f"name {name!r} is not a safe recipe name: it must be {NAME_RULE}"
    return None


def safe_name(name: str, fallback: str = "model") -> str:
    """``name`` made into a safe recipe name (unsafe runs to '-', '..' to '.', leading junk dropped)."""
    out = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", name))
    out = re.sub(r"^[^A-Za-z0-9]+", "", out)[:MAX_NAME_CHARS]
    return out or fallback


def model_dir(model: str) -> Path:
    return run_path(model)


def scheme_dir(model: str, scheme: str) -> SchemeDir:
    return SchemeDir(run_path(model, scheme))
