"""One frozen dataclass per result file; its field names are the file's JSON keys.

Every result file is written and read through its class: ``write(path)`` and
``read(path)``. Reading rejects unknown keys and names the missing ones, so a
writer and a reader can never silently disagree on a file's shape (a test
round-trips each class through what the real code writes).

Nested rows (per-batch-size speed rows, per-task metrics) stay plain JSON
mappings inside a typed field: their keys are documented where they are made.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pipelines.rundir.atomic import write_json_atomic

R = TypeVar("R", bound="ResultFile")

# The compute dtype, its reason, the CPU capability and the threads of the stage that is running
# (pipelines.recipes.ComputeChoice as a dict): every result file written meanwhile records it, so
# no number is ever read without the precision and kernels that produced it.
_COMPUTE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("qeval_compute", default=None)


@contextlib.contextmanager
def recording_compute(compute: dict[str, Any] | None) -> Iterator[None]:
    """Stamp every result file written inside the block with ``compute``."""
    token = _COMPUTE.set(compute)
    try:
        yield
    finally:
        _COMPUTE.reset(token)


class ResultFileError(ValueError):
    """A result file does not have the shape its dataclass declares."""


@dataclasses.dataclass(frozen=True)
class ResultFile:
    """Base: strict dict conversion and atomic JSON reading and writing."""

    FILE: ClassVar[str] = ""  # the file name inside its stage folder
    # What computed it: dtype, reason, device, CPU capability, threads (see recording_compute).
    compute: dict[str, Any] | None = dataclasses.field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if data.get("compute") is None:
            data["compute"] = _COMPUTE.get()
        return data

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any], where: str = "") -> R:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ResultFileError(f"{where or cls.__name__}: unknown key(s) {unknown}; {cls.__name__} has {sorted(names)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ResultFileError(f"{where or cls.__name__}: missing key(s) {missing}; rerun the stage that writes it")
        return cls(**data)

    def write(self, path: Path) -> Path:
        write_json_atomic(Path(path), self.to_dict())
        return Path(path)

    @classmethod
    def read(cls: type[R], path: Path) -> R:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), str(path))

    @classmethod
    def read_if_present(cls: type[R], path: Path) -> R | None:
        return cls.read(path) if Path(path).is_file() else None


@dataclasses.dataclass(frozen=True)
class PerplexityResult(ResultFile):
    """One dataset's perplexity with its protocol (an entry of ``eval/perplexity.json``)."""

    dataset: str
    source: dict[str, Any]
    protocol: str
    seq_len: int
    stride: int
    n_windows: int
    n_tokens: int
    token_ids_sha256: str
    ppl: float
    word_ppl: float
    bits_per_byte: float
    nll_sum: float
    n_words: int
    n_bytes: int
    dtype: str
    device: str
    window_nll: list[float] = dataclasses.field(default_factory=list)
    window_tokens: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class PerplexityFile(ResultFile):
    """``eval/perplexity.json``: dataset name -> PerplexityResult (the file is that mapping)."""

    FILE: ClassVar[str] = "perplexity.json"
    datasets: dict[str, PerplexityResult]

    def to_dict(self) -> dict[str, Any]:
        return {name: r.to_dict() for name, r in self.datasets.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> PerplexityFile:
        return cls({name: PerplexityResult.from_dict(entry, f"{where}[{name}]") for name, entry in data.items()})


@dataclasses.dataclass(frozen=True)
class TasksResult(ResultFile):
    """``eval/tasks.json``: lm-eval metrics per task, with what reproduces them."""

    FILE: ClassVar[str] = "tasks.json"
    results: dict[str, dict[str, Any]]  # task -> {acc, acc_stderr, acc_norm, ...}
    n_samples: dict[str, int]
    limit: dict[str, Any]
    lm_eval_version: str
    tasks_dir: str
    lm_eval_tasks: dict[str, str]  # task -> the lm-eval task name that ran
    provenance: dict[str, Any]
    samples: dict[str, str]  # task -> samples file, relative to eval/
    settings: dict[str, Any]
    duration_s: float
    dtype: str  # the model's dtype: in bf16, answers can flip with the batch size
    # One `lm_eval` command per distinct limit (its --limit is global) that reproduces these
    # numbers from the checkpoint: model args with dtype, batch size, include_path, tasks.
    lm_eval_commands: list[str]
    # Generative tasks: decoding settings that ran and collapse detectors (evals.generation).
    generation: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Per task: the smallest accuracy change (points) this many examples can detect (evals.flips).
    mde_points: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SpeedResult(ResultFile):
    """``bench/speed.json``: prefill/decode speed per batch size and length, and the roofline.

    ``representative`` is derived from ``what_ran`` by ``evals.kernels.judge_representative``;
    ``representative_reason`` says why not, when not.
    """

    FILE: ClassVar[str] = "speed.json"
    device_kind: str  # torch device type it ran on: "cpu", "cuda"
    device_name: str  # CPU model string or GPU name
    what_ran: dict[str, Any]  # evals.kernels.what_ran: linear-layer storage and matmul operators seen
    settings: dict[str, Any]
    results: list[dict[str, Any]]  # one row per (batch size, prompt, gen): status, tok/s, ttft_ms, itl_ms
    roofline: dict[str, Any] | None = None
    representative: bool = True
    representative_reason: str | None = None


@dataclasses.dataclass(frozen=True)
class MemoryResult(ResultFile):
    """``bench/memory.json``: bytes on disk, resident weights, peaks and KV-cache size."""

    FILE: ClassVar[str] = "memory.json"
    disk_bytes: int | None
    weights_bytes: int
    weights_bytes_by_device: dict[str, int]
    peak_rss_bytes: int
    cuda_peak_allocated_bytes: int | None
    cuda_peak_reserved_bytes: int | None
    kv_bytes_per_token: int
    kv_dtype: str
    get_memory_footprint_bytes: int | None
    representative: bool = True


@dataclasses.dataclass(frozen=True)
class QuantizeResult(ResultFile):
    """``quantize/quantize.json``: what the quantize stage did, with which library, at what cost."""

    FILE: ClassVar[str] = "quantize.json"
    scheme: str
    variant: str
    quantizer: str
    library: str
    library_version: str
    backend: str
    format: str
    params: dict[str, Any]
    ignore: list[str]
    calibration: dict[str, Any] | None  # the calibration windows' settings and digest; None: no calibration
    device: str
    torch_threads: int
    dtype: str
    duration_s: float
    peak_rss_bytes: int
    cuda_peak_allocated_bytes: int | None
    checkpoint: str
    disk_bytes: int | None
    baseline_disk_bytes: int | None
    compression_ratio: float | None
    emulated: bool  # the quantizer's emulated_on(device): a dequantized stand-in ran, costs not representative
    notes: list[str]
    worst_layers: list[dict[str, Any]]  # by raw rel_error: {layer, rel_error, rel_error_fitted, backend_loss}
    # The held-out windows every scheme's layer errors are scored on (dataset, source documents,
    # n_windows, seq_len, token_ids_sha256); None where no layer errors are measured.
    layer_error_windows: dict[str, Any] | None = None
    # Engines other than transformers (llama.cpp): version/commit, type, bits per weight as the
    # engine reports it, file bytes, seconds, and per-tensor types and sizes. None otherwise.
    engine: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class FidelityFile(ResultFile):
    """``eval/fidelity.json``: the scheme's next-token distributions against its model's baseline.

    ``datasets``: dataset -> figures of ``evals.fidelity.FidelityAccumulator.summary`` (KL both
    ways as mean/median/p90/p99/max, top-1 agreement, top-k overlap, mean ΔNLL, per-window series).
    ``noise_floor``: the same figures for the baseline against itself in another dtype, per
    dataset, with what was compared; every figure is to be read beside it. ``bound`` is
    "lower" (top-k buckets) or "exact" (full rows); ``method`` says it in words.
    """

    FILE: ClassVar[str] = "fidelity.json"
    method: str
    bound: str
    reference: dict[str, Any]  # key, top_k, dtype, device, bytes, n_tokens, token ids digest per dataset
    datasets: dict[str, dict[str, Any]]
    noise_floor: dict[str, Any] | None
    token_kl_file: str | None  # per-token KL(base||scheme), float32 .npy per dataset, relative to eval/


@dataclasses.dataclass(frozen=True)
class ServeResult(ResultFile):
    """``serve/serve.json``: a real engine under load, per concurrency level, and what it buys.

    Each level: concurrency, requests_ok, errors, requests_per_s, output_tokens_per_s and
    ``ttft_ms``/``itl_ms``/``tpot_ms``/``e2e_ms`` as {p50, p90, p99, mean}.
    ``capacity``: evals.capacity.capacity at the recipe's SLO; ``cost``: $/1M output tokens at
    capacity and the KV-cache headroom.
    """

    FILE: ClassVar[str] = "serve.json"
    engine: str  # transformers | llama.cpp | vllm | endpoint
    engine_version: str
    engine_settings: dict[str, Any]
    device_kind: str  # where the engine ran: "cpu" or "cuda"
    load: dict[str, Any]  # the load generator, its version and the synthetic request distribution
    levels: list[dict[str, Any]]
    stopped_because: str  # "all levels ran" or why the sweep stopped early
    capacity: dict[str, Any]
    cost: dict[str, Any]
    startup_s: float
    warmup_s: float
