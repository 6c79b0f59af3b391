"""Quantize stage: run one scheme's library, save the checkpoint, reload it, report per-layer error.

Writes ``quantize/model/`` (atomically, as a whole directory),
``quantize/quantize.json`` and ``quantize/layer_errors.csv``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any

from evals.data import resolve_data_dir
from pipelines.environment import library_version
from pipelines.errors import QevalError
from pipelines.quantizers import get_quantizer, layer_errors, loading
from pipelines.quantizers.base import Quantizer, QuantizeRequest, match_ignore
from pipelines.quantizers.calibration import CalibrationSet, build_calibration
from pipelines.rundir import (
    atomic_directory,
    dir_bytes,
    model_dir,
    read_json,
    stable_hash,
    write_json_atomic,
    write_text_atomic,
)
from pipelines.stages.common import StageContext, quantize_key, run_stage

log = logging.getLogger(__name__)

# Windows used for the per-layer error report of schemes that do not calibrate.
LAYER_ERROR_WINDOWS = 4


def prepare(ctx: StageContext) -> tuple[Quantizer, Any, list[str]]:
    """Validate the scheme against the library, the hardware and the model; nothing is written.

    Returns the quantizer, its parsed parameters and the layer names to keep in
    high precision (the scheme's ignore patterns expanded).

    Raises QevalError (bad parameters, group size, ignore patterns) or
    UnsupportedHere (library missing, hardware cannot run it).
    """
    quantizer = get_quantizer(ctx.recipe.scheme.quantizer)
    params = quantizer.parse_params(ctx.recipe.scheme.params, f"scheme {ctx.scheme} params")
    quantizer.check_environment(ctx.device, params)
    if quantizer.key == "prequantized":
        if not ctx.recipe.scheme.source:
            raise QevalError(
                f"scheme {ctx.scheme} evaluates an existing checkpoint but names none: set PREQUANTIZED=<hub id or path> "
                "(--prequantized) or `source:` in its recipe"
            )
        from pipelines.quantizers.prequantized import detect_format

        detect_format(ctx.recipe.scheme.source)
        return quantizer, params, []
    shapes = base_layer_shapes(ctx.base_source, ctx.recipe.model.revision)
    ignored = match_ignore(ctx.recipe.scheme.ignore, sorted(shapes))
    quantizer.check_model(params, {n: s for n, s in shapes.items() if n not in ignored})
    return quantizer, params, ignored


def base_layer_shapes(source: str, revision: str | None) -> dict[str, tuple[int, int]]:
    """Linear layer shapes read from the config alone (meta tensors, no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source, revision=revision)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return layer_errors.linear_layer_shapes(skeleton)


def calibration_set(ctx: StageContext, tokenizer) -> CalibrationSet:
    """Tokenize calibration text once per model and settings; every scheme of a sweep reuses it."""
    import pickle

    cal = ctx.recipe.calibration
    key = stable_hash({"model": ctx.recipe.model.source, "rev": ctx.recipe.model.revision, **cal.model_dump(),
                       "data_dir": ctx.recipe.data_dir})
    cache = model_dir(ctx.model) / ".cache" / f"calibration-{key}.pkl"
    if cache.is_file():
        with open(cache, "rb") as f:
            return pickle.load(f)
    data_dir = resolve_data_dir(ctx.recipe.data_dir)
    calib = build_calibration(tokenizer, dataset=cal.dataset, n_samples=cal.n_samples, seq_len=cal.seq_len,
                              seed=cal.seed, data_dir=data_dir)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(calib, f)
    tmp.replace(cache)
    return calib


class PeakRSS:
    """Sample this process's RSS in a thread: the peak while a block runs."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s, self.peak_bytes, self._stop = interval_s, 0, threading.Event()

    def __enter__(self):
        import psutil

        proc = psutil.Process()

        def sample():
            while not self._stop.is_set():
                self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(ctx: StageContext) -> str:
    quantizer, params, ignored = prepare(ctx)
    key = quantize_key(ctx.recipe, quantizer.needs_calibration)
    return run_stage(ctx, "quantize", key, lambda: _quantize(ctx, quantizer, params, ignored))


def _quantize(ctx: StageContext, quantizer: Quantizer, params, ignored: list[str]) -> tuple[list[Path], dict]:
    import torch

    recipe, device = ctx.recipe, ctx.device
    prequantized = quantizer.key == "prequantized"
    source = recipe.scheme.source if prequantized else ctx.base_source
    tokenizer = loading.load_tokenizer(ctx.base_source, recipe.model.revision)
    # Calibrating schemes need the windows; the others use a few of them for the
    # per-layer error report. The baseline and prequantized checkpoints have none.
    measure_errors = quantizer.key not in ("baseline", "prequantized")
    calib = calibration_set(ctx, tokenizer) if (quantizer.needs_calibration or measure_errors) else None
    request = QuantizeRequest(
        source=source, revision=recipe.model.revision, dtype=recipe.model.dtype, device=device, params=params,
        ignore=ignored, calibration=calib if quantizer.needs_calibration else None,
        out_dir=ctx.sdir.checkpoint_dir, n_gpus=recipe.model.n_gpus,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with PeakRSS() as rss:
        if prequantized:
            outcome = quantizer.quantize(request)
        else:
            with atomic_directory(ctx.sdir.checkpoint_dir) as staging:
                request.out_dir = staging
                outcome = quantizer.quantize(request)
                gc.collect()
    duration_s = time.perf_counter() - start
    checkpoint = source if prequantized else str(ctx.sdir.checkpoint_dir)
    disk_bytes = dir_bytes(Path(checkpoint)) if Path(checkpoint).is_dir() else None
    baseline_bytes = _baseline_bytes(ctx)

    # Reload in this process from disk: proves the checkpoint loads and measures
    # what was saved (never the in-memory model; see the bitsandbytes trap).
    errors: list[layer_errors.LayerError] = []
    kernels: dict[str, int] = {}
    if measure_errors:
        base = loading.load_dense(ctx.base_source, recipe.model.dtype, device, revision=recipe.model.revision,
                                 n_gpus=recipe.model.n_gpus, stage=loading.REFERENCE_LOAD)
        loading.count_load("quantize")
        quant = quantizer.load(checkpoint, device, recipe.model.dtype, recipe.model.n_gpus)
        kernels = _linear_kernels(quant)
        windows = calib.windows if quantizer.needs_calibration else calib.windows[:LAYER_ERROR_WINDOWS]
        errors = layer_errors.measure_layer_errors(base, quant, windows[:LAYER_ERROR_WINDOWS * 2],
                                                   ignored=set(ignored), backend_losses=outcome.backend_losses,
                                                   folds_input_scales=quantizer.folds_input_scales)
        del base, quant
        gc.collect()
    ctx.sdir.quantize_dir.mkdir(parents=True, exist_ok=True)
    outputs = [ctx.sdir.quantize_json]
    if errors:
        write_text_atomic(ctx.sdir.layer_errors_csv, layer_errors.to_csv(errors))
        outputs.append(ctx.sdir.layer_errors_csv)
    info = {
        "scheme": ctx.scheme,
        "variant": recipe.scheme.name,
        "quantizer": quantizer.key,
        "library": quantizer.library,
        "library_version": library_version(quantizer.library),
        "backend": outcome.backend,
        "format": outcome.format,
        "kernels": kernels,
        "params": params.model_dump(),
        "ignore": ignored,
        "calibration": calib.to_dict() if (calib is not None and quantizer.needs_calibration) else None,
        "device": device,
        # GPTQ's result depends on torch's thread count (reductions are split per thread).
        "torch_threads": torch.get_num_threads(),
        "dtype": recipe.model.dtype,
        "duration_s": round(duration_s, 3),
        "peak_rss_bytes": rss.peak_bytes,
        "cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        "checkpoint": checkpoint,
        "disk_bytes": disk_bytes,
        "baseline_disk_bytes": baseline_bytes,
        "compression_ratio": (baseline_bytes / disk_bytes) if (baseline_bytes and disk_bytes) else None,
        "emulated": outcome.emulated,
        "notes": outcome.notes,
        "worst_layers": layer_errors.worst(errors, 10),
    }
    write_json_atomic(ctx.sdir.quantize_json, info)
    if not prequantized:
        outputs.insert(0, ctx.sdir.checkpoint_dir)
    return outputs, {"duration_quantize_s": round(duration_s, 3)}


def _baseline_bytes(ctx: StageContext) -> int | None:
    qjson = model_dir(ctx.model) / "baseline" / "quantize" / "quantize.json"
    if ctx.scheme == "baseline":
        return dir_bytes(ctx.sdir.checkpoint_dir) if ctx.sdir.checkpoint_dir.exists() else None
    return read_json(qjson).get("disk_bytes") if qjson.is_file() else None


def _linear_kernels(model) -> dict[str, int]:
    """Count the module classes that run the linear layers (which kernel actually runs)."""
    counts: dict[str, int] = {}
    for _name, mod in model.named_modules():
        weight = getattr(mod, "weight", None)
        kind = type(mod).__name__
        if kind == "Linear" and weight is not None and type(weight).__name__ not in ("Parameter", "Tensor"):
            kind = f"Linear[{type(weight).__name__}]"
        elif kind == "Linear" and weight is not None and weight.dtype.is_floating_point is False:
            kind = f"Linear[{weight.dtype}]"
        if "Linear" in kind or "QuantLinear" in kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts
