"""Recipe schema: pydantic models of model, scheme and suite recipes (unknown keys are errors).

A run is described by three YAML files and the command line:

* ``recipes/models/<alias>.yaml``   where the model comes from, its dtype, per-model overrides
* ``recipes/schemes/<name>.yaml``   one quantization scheme variant and its parameters
* ``recipes/suites/<name>.yaml``    which schemes, calibration, evaluation, benchmark and gates

They are merged (scheme defaults < suite < suite per-scheme < model overrides <
command line) into one :class:`ResolvedRecipe` per scheme, which is written
into the run directory and hashed into stage keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.compute import ComputeDecision
from pipelines.recipes.serving import HardwareConfig, ServeConfig, SloConfig
from pipelines.rundir.paths import name_problem, safe_name

DType = Literal["float32", "bfloat16", "float16"]
# Every value a stage would reject is rejected here, when the recipe is validated at plan
# time, so a sweep never runs quantize and evaluate only to fail in the benchmark.
Positive = Annotated[int, Field(gt=0)]
TaskName = Annotated[str, Field(min_length=1)]


class Strict(BaseModel):
    """Base for recipe sections: unknown keys are rejected, so a typo never becomes a default."""

    model_config = ConfigDict(extra="forbid", frozen=False)


def _check_recipe_name(name: str) -> str:
    """A model, scheme or suite name names a folder under the runs root: a safe name only."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{problem}. It names a folder under the runs directory: set `name:` to a safe one, "
                         f"e.g. {safe_name(str(name), 'my-recipe')!r}")
    return name


class Resources(Strict):
    """What one stage task of this model asks a Ray cluster for (None: derived from the model's size)."""

    cpus: float | None = Field(
        None, gt=0, description="default: 1 on a GPU cluster; a whole node on a CPU-only one (see ray_executor)"
    )
    gpus: float | None = Field(None, ge=0, description="default: n_gpus on a GPU cluster, else 0")
    memory_gib: float | None = Field(None, gt=0, description="default: estimated from the parameter count")


# The compute dtype a sweep resolved (pipelines.compute), recorded in every recipe it writes.
ComputeChoice = ComputeDecision


class ModelRecipe(Strict):
    """Where a model comes from and how it is loaded."""

    name: str
    _safe_name = field_validator("name")(_check_recipe_name)
    source: str = Field(description="Hub id, local directory, or 'embedded:smollm2-135m'")
    revision: str | None = None
    requested_revision: str | None = Field(
        None, description="filled at plan time: the branch or tag that `revision` was resolved from (not for recipe files)")
    dtype: DType = Field("bfloat16", description="the checkpoint's storage precision: the reference")
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="what the stages compute in; auto: chosen from the hardware (pipelines/compute.py)")
    compute: ComputeChoice | None = Field(
        None, description="filled at plan time: the resolved compute dtype and why (not for recipe files)")
    max_context: int | None = Field(None, gt=0, description="cap on sequence length; default from the config")
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
    slo: dict[str, Any] = Field(default_factory=dict, description="overrides of the suite's slo: block")
    hardware: HardwareConfig | None = Field(None, description="the serving machine and its price (serve stage)")
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
    _safe_name = field_validator("name")(_check_recipe_name)
    quantizer: str
    description: str = ""
    params: dict[str, Any] = {}
    ignore: list[str] = ["lm_head"]
    calibration: CalibrationOverride = CalibrationOverride()
    source: str | None = Field(None, description="prequantized: the checkpoint to evaluate (Hub id or path)")
    baseline: str | None = Field(None, description="prequantized: the model alias it is compared against")


class FidelityConfig(Strict):
    """KL / top-1 agreement against the baseline on the perplexity windows (evals/fidelity.py)."""

    top_k: int | None = Field(32, ge=1, description="baseline tokens stored per position; null: full rows "
                              "(exact KL, 4 bytes x vocabulary per token)")
    noise_floor: bool = Field(True, description="also score the baseline in another dtype (float32 vs bf16/fp16)")
    datasets: list[Literal["wikitext2", "c4"]] | None = Field(
        None, description="perplexity datasets compared with the baseline; null: every one (a subset saves time)")


class PerplexityConfig(Strict):
    datasets: list[Literal["wikitext2", "c4"]] = Field(["wikitext2"], min_length=1)
    protocol: Literal["gptq", "sliding"] = "gptq"
    seq_len: int | None = Field(None, ge=8, description="default: 2048 capped at the model's context")
    stride: int | None = Field(None, ge=1, description="sliding protocol only; default seq_len // 2")
    max_windows: int | None = Field(None, ge=1, description="score only the first N windows (smoke runs)")
    batch_size: int = Field(4, ge=1)
    fidelity: FidelityConfig | None = Field(FidelityConfig(), description="null: no fidelity.json")

    @model_validator(mode="after")
    def _stride_fits_protocol(self) -> PerplexityConfig:
        if self.stride is not None and self.protocol != "sliding":
            raise ValueError(f"stride is used only by protocol 'sliding', not {self.protocol!r}: remove it "
                             "or set protocol: sliding")
        if self.stride is not None and self.seq_len is not None and self.stride > self.seq_len:
            raise ValueError(f"stride {self.stride} is longer than seq_len {self.seq_len}: tokens between "
                             "windows would never be scored. Use stride <= seq_len.")
        return self


class GenerationConfig(Strict):
    """Decoding of generative tasks (gsm8k); recorded in tasks.json. Greedy unless repeats > 1."""

    max_gen_toks: Positive | None = Field(None, description="token budget per answer; null: the task's own (256)")
    repeats: Positive = Field(1, description="samples per prompt; > 1 samples at `temperature` instead of greedy")
    temperature: float = Field(0.7, gt=0, description="used only when repeats > 1")
    chat_template: bool | Literal["auto"] = Field(
        "auto", description="apply the tokenizer's chat template (few-shot as multi-turn); auto: when it has one")


class TasksConfig(Strict):
    names: list[TaskName] = []
    limit: Positive | dict[str, Positive | None] | None = Field(
        None, description="examples per task: one number, or per task name (None: all)")
    batch_size: int = Field(8, ge=1)
    tasks_dir: str | None = None
    generation: GenerationConfig = GenerationConfig()


class BenchmarkConfig(Strict):
    batch_sizes: list[Positive] = Field([1, 8], min_length=1)
    prompt_lens: list[Positive] = Field([128], min_length=1)
    # The first token comes from the prefill; decode speed needs at least one more.
    gen_lens: list[Annotated[int, Field(ge=2)]] = Field([32], min_length=1)
    warmup: int = Field(2, ge=0)
    iters: int = Field(5, ge=1)
    min_time_s: float = Field(1.0, ge=0, allow_inf_nan=False)
    profile: bool = False


class SuiteRecipe(Strict):
    """What a sweep runs and how it is judged."""

    name: str
    _safe_name = field_validator("name")(_check_recipe_name)
    description: str = ""
    # What a full run of this suite should take on the machine it is meant for; `qeval plan`
    # warns when its estimate for this machine is over it.
    time_budget_min: float | None = Field(None, gt=0, allow_inf_nan=False)
    schemes: list[str]
    calibration: CalibrationOverride = CalibrationOverride()
    calibration_per_scheme: dict[str, CalibrationOverride] = {}
    perplexity: PerplexityConfig = PerplexityConfig()
    tasks: TasksConfig = TasksConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    gates: dict[str, Any] = {}
    serve: ServeConfig = ServeConfig()
    slo: SloConfig = SloConfig(ttft_ms_p99=2000, itl_ms_p99=200)
    hardware: HardwareConfig = HardwareConfig()
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
    serve: ServeConfig = ServeConfig()
    slo: SloConfig = SloConfig()  # the suite's, with the model's slo: merged in
    hardware: HardwareConfig = HardwareConfig()  # suite < model < command line
    data_dir: str | None
    device: Literal["auto", "cpu", "cuda"]

    @property
    def compute_dtype(self) -> str:
        """The dtype the stages load models in: the sweep's resolved choice (see ComputeChoice)."""
        if self.model.compute is not None:
            return self.model.compute.dtype
        if self.model.compute_dtype != "auto":
            return self.model.compute_dtype
        raise RuntimeError("the compute dtype was not resolved: plan the sweep (execution.plan) first")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: Path) -> ResolvedRecipe:
        return cls.model_validate(yaml.safe_load(path.read_text()))
