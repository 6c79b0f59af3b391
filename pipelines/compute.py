"""The compute dtype and thread count: what the models run in here, chosen from the hardware.

A model recipe's ``dtype`` is the checkpoint's storage precision (the reference). The compute
dtype is what every stage loads the models in. ``compute_dtype: auto`` (the default) picks:

* on CUDA: bfloat16 where the device supports it, else float16;
* on a CPU: the storage dtype only where the CPU computes it natively (oneDNN bf16 on
  AVX512-BF16 or AMX; fp16 on AMX-FP16) *and* a short GEMM/GEMV probe of this model's shapes
  says it is not slower than float32. Otherwise float32, which is exact for 16-bit weights,
  as long as the float32 weights fit in memory. On an AVX2-only CPU torch's bf16 matmul falls
  back to a path about 30x slower than float32, which this avoids.

The probe runs once per CPU model, torch version, thread count and shape set, and is cached
as JSON under ``QEVAL_CACHE_DIR`` (``.cache/`` in the project). It takes about a second.

Threads: torch and llama.cpp get the same count, ``QEVAL_THREADS`` or the physical cores.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pipelines.environment import PROJECT_ROOT, cpu_model

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
# The share of memory the float32 weights may take before auto keeps the storage dtype:
# activations, the KV cache, a second model (the fidelity reference) and the OS need the rest.
FP32_MEMORY_SHARE = 0.4
# A probe shape runs at least this long per dtype; three shapes x three dtypes ~ 1 s.
PROBE_MIN_S = 0.08
PROBE_VERSION = 1  # bump when the probe's method changes: cached probes are then redone


def cache_dir() -> Path:
    """Where qeval caches what it derives once per machine (``QEVAL_CACHE_DIR`` or ``.cache/``)."""
    return Path(os.environ.get("QEVAL_CACHE_DIR", PROJECT_ROOT / ".cache")).resolve()


# ----------------------------------------------------------------------------- threads


def physical_cores() -> int:
    """Physical cores this process may use: SMT siblings count once (from /proc/cpuinfo)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        block: dict[str, str] = {}
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in [*handle, "\n"]:
                if not line.strip():
                    if "core id" in block:
                        cores.add((block.get("physical id", "0"), block["core id"]))
                    block = {}
                    continue
                key, _, value = line.partition(":")
                block[key.strip()] = value.strip()
    except OSError:
        pass
    return max(1, min(len(cores) or allowed, allowed))


def thread_count() -> int:
    """Threads for torch and llama.cpp: ``QEVAL_THREADS``, else ``OMP_NUM_THREADS``, else the
    physical cores (SMT siblings share one core's FMA units: a second thread on them slows a GEMM)."""
    raw = os.environ.get("QEVAL_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value >= 1:
            return value
        log.warning("thread count %r (QEVAL_THREADS / OMP_NUM_THREADS) is not a positive integer; "
                    "using the physical cores", raw)
    return physical_cores()


def apply_threads() -> int:
    """Set torch's intra-op threads to :func:`thread_count` (and interop to 1: stages run one
    model at a time, so a second pool only competes for the same cores). Returns the count."""
    import torch

    n = thread_count()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started: leave it
        pass
    return n


# ----------------------------------------------------------------------------- the CPU


@dataclass
class CpuFeatures:
    model: str
    flags: dict[str, bool]  # the ISA extensions that decide the kernels
    capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    native_bf16: bool  # oneDNN computes bf16 natively (AVX512-BF16 or AMX-BF16)
    native_fp16: bool  # oneDNN computes fp16 natively (AMX-FP16 or AVX512-FP16)


_FLAG_NAMES = {"avx2": "avx2", "avx512f": "avx512f", "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16",
               "amx_fp16": "amx_fp16", "avx512_fp16": "avx512_fp16", "avx512_vnni": "avx512_vnni"}


def cpu_flags() -> dict[str, bool]:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {name: proc in flags for name, proc in _FLAG_NAMES.items()}


def cpu_features() -> CpuFeatures:
    import torch

    def supported(name: str) -> bool:
        check = getattr(torch.ops.mkldnn, name, None)
        try:
            return bool(check()) if check is not None else False
        except Exception:  # an older torch without the op, or a build without oneDNN
            return False

    return CpuFeatures(model=cpu_model(), flags=cpu_flags(), capability=torch.backends.cpu.get_cpu_capability(),
                       native_bf16=supported("_is_mkldnn_bf16_supported"),
                       native_fp16=supported("_is_mkldnn_fp16_supported"))


# ----------------------------------------------------------------------------- the probe


def model_shapes(hidden: int, intermediate: int, vocab: int, prefill_tokens: int = 512) -> dict[str, list[int]]:
    """The probe's matmuls (m x k x n): a prefill GEMM, a decode GEMV and the LM head GEMV."""
    return {"prefill": [prefill_tokens, hidden, intermediate], "decode": [1, hidden, intermediate],
            "lm_head": [1, hidden, vocab]}


def shapes_of_config(config: Any) -> dict[str, list[int]]:
    hidden = int(getattr(config, "hidden_size", 0) or 0) or 1024
    intermediate = int(getattr(config, "intermediate_size", 0) or 0) or 4 * hidden
    vocab = int(getattr(config, "vocab_size", 0) or 0) or 32000
    return model_shapes(hidden, intermediate, vocab)


def measure_gflops(shape: list[int], dtype_name: str, min_s: float = PROBE_MIN_S) -> float:
    """GFLOP/s of ``x @ w`` in one dtype on the CPU, at torch's current thread count."""
    import torch

    m, k, n = shape
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = torch.randn(k, n, generator=gen).to(dtype)
    with torch.inference_mode():
        torch.matmul(x, w)  # warm-up: kernel selection and first-touch pages
        reps, start = 0, time.perf_counter()
        while True:
            torch.matmul(x, w)
            reps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_s and reps >= 2:
                break
    return 2.0 * m * k * n * reps / elapsed / 1e9


def probe_path(features: CpuFeatures, threads: int, shapes: dict[str, list[int]]) -> Path:
    import hashlib

    import torch

    ident = json.dumps({"cpu": features.model, "capability": features.capability, "flags": features.flags,
                        "torch": torch.__version__, "threads": threads, "shapes": shapes,
                        "version": PROBE_VERSION, "env": {k: os.environ.get(k) for k in
                                                          ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}},
                       sort_keys=True)
    return cache_dir() / "compute-probe" / f"{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"


def probe(shapes: dict[str, list[int]], threads: int | None = None, *, use_cache: bool = True) -> dict[str, Any]:
    """GFLOP/s per shape and dtype on this CPU, cached per CPU, torch version, threads and shapes."""
    import torch

    threads = threads or torch.get_num_threads()
    features = cpu_features()
    path = probe_path(features, threads, shapes)
    if use_cache and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # a torn or foreign file: measure again
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gflops = {name: {d: round(measure_gflops(shape, d), 3) for d in DTYPES} for name, shape in shapes.items()}
    finally:
        torch.set_num_threads(before)
    result = {"shapes": shapes, "gflops": gflops, "threads": threads, "cpu": asdict(features),
              "torch": torch.__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # atomic: a concurrent reader sees all or nothing
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return result


# How an evaluation suite's time splits over the probe's shapes: mostly prefill (perplexity
# windows, log-likelihood tasks, calibration), the rest decoding (generative tasks, the
# benchmark, serving). On AVX512-BF16 CPUs bf16 GEMMs run ~3x float32 while bf16 GEMVs run
# ~0.5x, so an unweighted mean would pick float32 and lose most of the prefill speed.
SHAPE_WEIGHTS = {"prefill": 0.8, "decode": 0.1, "lm_head": 0.1}


def speed_ratio(gflops: dict[str, dict[str, float]], dtype: str, against: str = "float32") -> float:
    """``dtype``'s speed relative to ``against``: the geometric mean over the probe's shapes,
    weighted by :data:`SHAPE_WEIGHTS`."""
    import math

    rows = {name: row for name, row in gflops.items() if row.get(against) and name in SHAPE_WEIGHTS}
    total = sum(SHAPE_WEIGHTS[name] for name in rows)
    if not total:
        return 0.0
    log_ratio = sum(SHAPE_WEIGHTS[name] * math.log(max(row[dtype] / row[against], 1e-9)) for name, row in rows.items())
    return math.exp(log_ratio / total)


# ----------------------------------------------------------------------------- the choice


class ComputeDecision(BaseModel):
    """The resolved compute dtype and everything that decided it (recorded beside every number).

    The one definition: model recipes store it as ``model.compute`` (pipelines.recipes.ComputeChoice).
    """

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float32", "bfloat16", "float16"]
    requested: Literal["auto", "float32", "bfloat16", "float16"]  # the recipe's compute_dtype
    storage_dtype: Literal["float32", "bfloat16", "float16"]
    reason: str
    device: str
    threads: int
    cpu_model: str | None = None
    cpu_capability: str | None = None
    native_bf16: bool | None = None
    native_fp16: bool | None = None
    gpu_name: str | None = None
    probe_gflops: dict[str, dict[str, float]] | None = None
    warnings: list[str] = []


def resolve(requested: str, storage_dtype: str, device: str, *, config: Any = None, n_params: int | None = None,
            threads: int | None = None, features: CpuFeatures | None = None,
            gflops: dict[str, dict[str, float]] | None = None, memory_bytes: int | None = None) -> ComputeDecision:
    """Choose the compute dtype (see the module doc). ``features``, ``gflops`` and ``memory_bytes``
    replace what this machine would report, for tests of the other branches."""
    threads = threads or thread_count()
    if device == "cuda":
        return _resolve_cuda(requested, storage_dtype, threads)
    features = features or cpu_features()
    base = dict(requested=requested, storage_dtype=storage_dtype, device=device, threads=threads,
                cpu_model=features.model, cpu_capability=features.capability,
                native_bf16=features.native_bf16, native_fp16=features.native_fp16)
    # Probed on every CPU (cached per machine): the choice needs it where the dtype is native, and
    # `qeval plan`'s time estimate needs the chosen dtype's rates everywhere.
    if gflops is None:
        gflops = probe(shapes_of_config(config) if config is not None else model_shapes(1024, 4096, 32000),
                       threads)["gflops"]
    base["probe_gflops"] = gflops
    if requested != "auto":
        return ComputeDecision(dtype=requested, reason=f"set in the recipe (compute_dtype: {requested})", **base)
    if storage_dtype == "float32":
        return ComputeDecision(dtype="float32", reason="the checkpoint is stored in float32", **base)
    native = features.native_bf16 if storage_dtype == "bfloat16" else features.native_fp16
    ratio = speed_ratio(gflops, storage_dtype) if gflops else None
    if native and ratio is not None and ratio >= 1.0:
        return ComputeDecision(dtype=storage_dtype, **base,
                               reason=f"{storage_dtype} is native on this CPU ({features.capability}) and "
                                      f"{ratio:.2f}x float32's speed in the probe")
    why = (f"{storage_dtype} is not native on this CPU ({features.capability}: torch falls back to a slow path)"
           if not native else f"{storage_dtype} ran at {ratio:.2f}x float32's speed in the probe")
    fp32_bytes = 4 * n_params if n_params else None
    memory_bytes = memory_bytes if memory_bytes is not None else _memory_bytes()
    if fp32_bytes and memory_bytes and fp32_bytes > FP32_MEMORY_SHARE * memory_bytes:
        gib = 2**30
        warning = (f"computing in {storage_dtype} on a CPU where it is slow ({why}): float32 weights "
                   f"({fp32_bytes / gib:.1f} GiB) would not fit in {FP32_MEMORY_SHARE:.0%} of this machine's "
                   f"{memory_bytes / gib:.1f} GiB. Expect several times the float32 time; the GGUF schemes "
                   "(llama.cpp) or a smaller suite (SUITE=smoke) run much faster here.")
        return ComputeDecision(dtype=storage_dtype, warnings=[warning], **base,
                               reason=f"{why}, but float32 weights would not fit in memory")
    return ComputeDecision(dtype="float32", reason=f"{why}; float32 is faster and exact",
                           **base)


def _resolve_cuda(requested: str, storage_dtype: str, threads: int) -> ComputeDecision:
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    base = dict(requested=requested, storage_dtype=storage_dtype, device="cuda", threads=threads, gpu_name=name)
    if requested != "auto":
        return ComputeDecision(dtype=requested, reason=f"set in the recipe (compute_dtype: {requested})", **base)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return ComputeDecision(dtype="bfloat16", reason=f"{name} supports bfloat16", **base)
    return ComputeDecision(dtype="float16", reason=f"{name} has no bfloat16 support", **base)


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
