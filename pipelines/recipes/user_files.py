"""A user's own recipe files: ``--suite my/suite.yaml``, ``--model my/model.yaml``, ``--schemes my/w4.yaml``.

Like lm-eval's ``--include_path``: a name that ends in ``.yaml``/``.yml`` is a file, read
and validated exactly as the recipes in ``recipes/`` are (same errors, same "did you
mean"). Its name is the file's ``name:`` or, without one, its stem; run directories,
per-scheme overrides and MLflow use that name. Paths inside a user file (a suite's
scheme files, a model's local ``source``) are relative to the file's folder.

Files are registered by name in this process when the plan reads them; workers never
need them again, since each scheme's resolved recipe is written into its run directory.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import QevalError
from pipelines.rundir.paths import name_problem, safe_name

SUFFIXES = (".yaml", ".yml")
KINDS = ("models", "schemes", "suites")

# (kind, name) -> the file it was read from
_REGISTERED: dict[tuple[str, str], Path] = {}


def is_recipe_path(name: str) -> bool:
    """True when a model, scheme or suite argument names a YAML file rather than a recipe in recipes/."""
    return isinstance(name, str) and name.lower().endswith(SUFFIXES)


def recipe_file(kind: str, name: str) -> Path:
    """The file behind a path argument; a clear error when it does not exist."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise QevalError(
            f"{kind.rstrip('s')} recipe file {name} does not exist (looked in {path.resolve().parent}). "
            f"Give an existing YAML file, or a name from recipes/{kind}/ (`qeval list {kind}`)."
        )
    return path.resolve()


def register(kind: str, name: str) -> str:
    """Register a user's recipe file; return the recipe name that the pipeline uses for it."""
    import yaml

    path = recipe_file(kind, name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise QevalError(f"{path}: not valid YAML ({exc}). Fix the file's syntax.") from exc
    recipe_name = str(data.get("name") or path.stem) if isinstance(data, dict) else path.stem
    problem = name_problem(recipe_name)
    if problem:  # the name becomes runs/<model>/<scheme>: it must not leave the runs root
        where = "its `name:`" if isinstance(data, dict) and data.get("name") else "its file name (no `name:` key)"
        raise QevalError(
            f"{path}: {kind.rstrip('s')} recipe {problem}; the name comes from {where} and names a folder "
            f"under the runs directory. Set `name:` in the file to a safe name, e.g. "
            f"`name: {safe_name(recipe_name, 'my-' + kind.rstrip('s'))}`."
        )
    _REGISTERED[(kind, recipe_name)] = path
    return recipe_name


def forget() -> None:
    """Drop every registered user file (a process that serves several commands, e.g. tests)."""
    _REGISTERED.clear()


def lookup(kind: str, name: str) -> Path | None:
    """The user file registered under ``name``, if any (a user file wins over recipes/)."""
    if is_recipe_path(name):
        return recipe_file(kind, name)
    return _REGISTERED.get((kind, name))


def localize(kind: str, data: dict, path: Path) -> dict:
    """Make the relative paths inside a user file relative to its folder."""
    base = path.parent
    if kind == "suites" and isinstance(data.get("schemes"), list):
        data["schemes"] = [str((base / s).resolve()) if is_recipe_path(s) and not Path(s).is_absolute() else s
                           for s in data["schemes"]]
    if kind == "suites" and isinstance(data.get("tasks"), dict) and data["tasks"].get("tasks_dir"):
        tasks_dir = Path(data["tasks"]["tasks_dir"]).expanduser()
        if not tasks_dir.is_absolute():
            data["tasks"]["tasks_dir"] = str((base / tasks_dir).resolve())
    if kind == "models" and isinstance(data.get("source"), str):
        source = data["source"]
        if source.startswith((".", "~")) and (base / source).expanduser().exists():
            data["source"] = str((base / source).expanduser().resolve())
    return data
