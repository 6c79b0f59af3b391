"""Recipes: pydantic models (unknown keys are errors), loading, merging and resolution.

A run is described by three YAML files and the command line:

* ``recipes/models/<alias>.yaml``   where the model comes from, its dtype, per-model overrides
* ``recipes/schemes/<name>.yaml``   one quantization scheme variant and its parameters
* ``recipes/suites/<name>.yaml``    which schemes, calibration, evaluation, benchmark and gates

They are merged (scheme defaults < suite < suite per-scheme < model overrides <
command line) into one :class:`ResolvedRecipe` per scheme, which is written
into the run directory and hashed into stage keys.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.errors import QevalError
from pipelines.rundir import PROJECT_ROOT

RECIPES_DIR = Path(os.environ.get("QEVAL_RECIPES_DIR", PROJECT_ROOT / "recipes"))

DType = Literal["float32", "bfloat16", "float16"]


class Strict(BaseModel):
    """Base for recipe sections: unknown keys are rejected, so a typo never becomes a default."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class Resources(Strict):
    """What one stage task of this model asks a Ray cluster for (None: derived from the model's size)."""

    cpus: float | None = Field(
        None, gt=0, description="default: 1 on a GPU cluster; a whole node on a CPU-only one (see ray_executor)"
    )
    gpus: float | None = Field(None, ge=0, description="default: n_gpus on a GPU cluster, else 0")
    memory_gib: float | None = Field(None, gt=0, description="default: estimated from the parameter count")


class ModelRecipe(Strict):
    """Where a model comes from and how it is loaded."""

    name: str
    source: str = Field(description="Hub id, local directory, or 'embedded:smollm2-135m'")
    revision: str | None = None
    dtype: DType = "bfloat16"
    max_context: int | None = Field(None, description="cap on sequence length; default from the config")
    default_suite: str = "standard"
    n_gpus: int = Field(1, ge=0, description="GPUs one stage needs (device_map='auto' across them)")
    resources: Resources = Resources()
    trust_remote_code: bool = False
    already_quantized: bool = Field(False, description="the 'unquantized' weights came from a quantized file")
    target_device: Literal["cpu", "cuda"] = Field(
        "cuda", description="where the model is served; cost gates apply only to numbers measured there"
    )
    caveats: list[str] = []
    scheme_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="scheme name -> params that this model needs (e.g. group_size)"
    )
    gates: dict[str, Any] = Field(default_factory=dict, description="overrides of the suite's gates")
    description: str = ""


class CalibrationConfig(Strict):
    """Calibration text: dataset, number of samples, tokens per sample and seed."""

    dataset: Literal["c4", "wikitext2"] = "c4"
    n_samples: int = Field(128, ge=1)
    seq_len: int = Field(2048, ge=8)
    seed: int = 0


class CalibrationOverride(Strict):
    dataset: Literal["c4", "wikitext2"] | None = None
    n_samples: int | None = Field(None, ge=1)
    seq_len: int | None = Field(None, ge=8)
    seed: int | None = None


class SchemeRecipe(Strict):
    """One scheme variant: a registered quantizer and its parameters."""

    name: str
    quantizer: str
    description: str = ""
    params: dict[str, Any] = {}
    ignore: list[str] = ["lm_head"]
    calibration: CalibrationOverride = CalibrationOverride()
    source: str | None = Field(None, description="prequantized: the checkpoint to evaluate (Hub id or path)")
    baseline: str | None = Field(None, description="prequantized: the model alias it is compared against")


class PerplexityConfig(Strict):
    datasets: list[Literal["wikitext2", "c4"]] = ["wikitext2"]
    protocol: Literal["gptq", "sliding"] = "gptq"
    seq_len: int | None = Field(None, ge=8, description="default: 2048 capped at the model's context")
    stride: int | None = Field(None, ge=1, description="sliding protocol only; default seq_len // 2")
    max_windows: int | None = Field(None, ge=1, description="score only the first N windows (smoke runs)")
    batch_size: int = Field(4, ge=1)


class TasksConfig(Strict):
    names: list[str] = []
    limit: int | dict[str, int | None] | None = None
    batch_size: int = Field(8, ge=1)
    tasks_dir: str | None = None


class BenchmarkConfig(Strict):
    batch_sizes: list[int] = [1, 8]
    prompt_lens: list[int] = [128]
    gen_lens: list[int] = [32]
    warmup: int = Field(2, ge=0)
    iters: int = Field(5, ge=1)
    min_time_s: float = Field(1.0, ge=0)
    profile: bool = False


class SuiteRecipe(Strict):
    """What a sweep runs and how it is judged."""

    name: str
    description: str = ""
    schemes: list[str]
    calibration: CalibrationOverride = CalibrationOverride()
    calibration_per_scheme: dict[str, CalibrationOverride] = {}
    perplexity: PerplexityConfig = PerplexityConfig()
    tasks: TasksConfig = TasksConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    gates: dict[str, Any] = {}
    data_dir: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ResolvedRecipe(Strict):
    """Everything one scheme's stages need, after merging and overrides."""

    model: ModelRecipe
    scheme: SchemeRecipe
    suite: str
    calibration: CalibrationConfig
    perplexity: PerplexityConfig
    tasks: TasksConfig
    benchmark: BenchmarkConfig
    gates: dict[str, Any]  # the suite's; the model's override is in model.gates
    data_dir: str | None
    device: Literal["auto", "cpu", "cuda"]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: Path) -> ResolvedRecipe:
        return cls.model_validate(yaml.safe_load(path.read_text()))


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
                problems.append(f"{loc}: {err['msg']}")
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
    path = RECIPES_DIR / kind / f"{name}.yaml"
    if not path.is_file():
        raise QevalError(unknown_name_message(kind.rstrip("s"), name, available(kind)))
    data = _load_yaml(path)
    data.setdefault("name", name)
    return data


def load_suite(name: str) -> SuiteRecipe:
    return validate(SuiteRecipe, load_recipe("suites", name), f"recipes/suites/{name}.yaml")


def load_scheme(name: str) -> SchemeRecipe:
    return validate(SchemeRecipe, load_recipe("schemes", name), f"recipes/schemes/{name}.yaml")


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


def resolve(
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
        data_dir=suite.data_dir,
        device=suite.device,
    )
