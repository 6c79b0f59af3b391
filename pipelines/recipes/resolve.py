"""Recipe loading, validation, merging and resolution into one ResolvedRecipe per scheme.

Merge order: scheme defaults < suite < suite per-scheme < model overrides < command line.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipelines.errors import QevalError
from pipelines.recipes import user_files
from pipelines.recipes.schema import (
    CalibrationConfig,
    CalibrationOverride,
    ModelRecipe,
    ResolvedRecipe,
    SchemeRecipe,
    Strict,
    SuiteRecipe,
)
from pipelines.recipes.serving import HardwareConfig, SloConfig, merge_section
from pipelines.rundir.paths import PROJECT_ROOT, name_problem


def recipes_dir() -> Path:
    """Where the shipped recipes are: ``QEVAL_RECIPES_DIR``, else the ``qeval_recipes`` package
    (the repository's top-level recipes/ folder, shipped in the wheel), else recipes/ beside the
    code (a checkout whose editable install predates the package mapping)."""
    override = os.environ.get("QEVAL_RECIPES_DIR")
    if override:
        return Path(override).expanduser()
    import importlib.util

    spec = importlib.util.find_spec("qeval_recipes")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / "suites").is_dir():
            return Path(location)
    return PROJECT_ROOT / "recipes"


RECIPES_DIR = recipes_dir()


def available(kind: str) -> list[str]:
    """Names of the recipes of one kind (models, schemes, suites)."""
    return sorted(p.stem for p in (RECIPES_DIR / kind).glob("*.yaml"))


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Available: {', '.join(choices)}"


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise QevalError(f"{path}: not valid YAML ({exc}). Fix the file's syntax.") from exc
    if not isinstance(data, dict):
        raise QevalError(f"{path}: expected a mapping at the top level")
    return data


def validate(model_cls: type[Strict], data: dict[str, Any], where: str) -> Any:
    """Validate ``data`` and turn pydantic's error into one that names the file and the field."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                allowed = _allowed_fields(model_cls, err["loc"][:-1])
                close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"unknown key {loc!r}{hint}; allowed: {', '.join(allowed)}")
            else:
                problems.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise QevalError(f"{where}: " + "; ".join(problems)) from exc


def _allowed_fields(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    cls: Any = model_cls
    for part in loc:
        field = cls.model_fields.get(str(part)) if hasattr(cls, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        cls = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if cls is None:
            return []
    return sorted(cls.model_fields)


def load_recipe(kind: str, name: str) -> dict[str, Any]:
    user_file = user_files.lookup(kind, name)  # a user's own YAML file (a path, or registered by name)
    if user_file is not None:
        data = user_files.localize(kind, _load_yaml(user_file), user_file)
        data.setdefault("name", user_files.register(kind, str(user_file)))
        return data
    path = RECIPES_DIR / kind / f"{name}.yaml"
    if name_problem(name) or not path.is_file():  # a name is never a path into (or out of) recipes/
        raise QevalError(unknown_name_message(kind.rstrip("s"), name, available(kind))
                         + f" (or give a path to your own {kind.rstrip('s')} YAML file)")
    data = _load_yaml(path)
    data.setdefault("name", name)
    return data


def recipe_where(kind: str, name: str) -> str:
    """The file a recipe came from, for error messages."""
    user_file = user_files.lookup(kind, name)
    return str(user_file) if user_file is not None else f"recipes/{kind}/{name}.yaml"


def load_suite(name: str) -> SuiteRecipe:
    return validate(SuiteRecipe, load_recipe("suites", name), recipe_where("suites", name))


def load_scheme(name: str) -> SchemeRecipe:
    return validate(SchemeRecipe, load_recipe("schemes", name), recipe_where("schemes", name))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["perplexity.seq_len=512", ...]`` into a nested dict (values parsed as YAML)."""
    result: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise QevalError(f"--set {item!r}: expected key=value, e.g. perplexity.seq_len=512")
        key, raw = item.split("=", 1)
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def _merge_calibration(*layers: CalibrationOverride) -> CalibrationConfig:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer.model_dump(exclude_none=True))
    return CalibrationConfig(**merged)


def resolve_recipe(
    model: ModelRecipe,
    scheme_name: str,
    suite: SuiteRecipe,
) -> ResolvedRecipe:
    """Merge model, scheme and suite into the recipe one scheme's stages run on."""
    scheme = load_scheme(scheme_name)
    params = deep_merge(scheme.params, model.scheme_overrides.get(scheme_name, {}))
    scheme = scheme.model_copy(update={"params": params})
    calibration = _merge_calibration(
        scheme.calibration, suite.calibration, suite.calibration_per_scheme.get(scheme_name, CalibrationOverride())
    )
    return ResolvedRecipe(
        model=model,
        scheme=scheme,
        suite=suite.name,
        calibration=calibration,
        perplexity=suite.perplexity,
        tasks=suite.tasks,
        benchmark=suite.benchmark,
        gates=suite.gates,
        serve=suite.serve,
        # The model's slo:/hardware: win key by key; a malformed value is an error naming the model.
        slo=validate(SloConfig, merge_section(suite.slo.model_dump(), model.slo), f"slo of {model.name}"),
        hardware=HardwareConfig(**merge_section(suite.hardware.model_dump(),
                                                model.hardware.model_dump() if model.hardware else None)),
        data_dir=suite.data_dir,
        device=suite.device,
    )
