"""Quantize stage: run one scheme's library, save the checkpoint, reload it, report per-layer error.

Writes ``quantize/model/`` (atomically, as a whole directory),
``quantize/quantize.json`` (evals.results.QuantizeResult) and ``quantize/layer_errors.csv``.
What the scheme does is read from its quantizer's class attributes
(``prequantized``, ``calibrates``, ``measures_layer_errors``, ``emulated_on``), never from its name.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from evals.data import resolve_data_dir
from evals.memory import PeakRSS  # the one definition of peak memory, shared with the benchmark
from evals.results import QuantizeResult, ResultFileError
from pipelines.environment import library_version
from pipelines.errors import QevalError
from pipelines.quantizers import get_quantizer, layer_errors, loading
from pipelines.quantizers.base import Quantizer, QuantizeRequest, match_ignore
from pipelines.quantizers.calibration import (
    CALIBRATION_FORMAT,
    LAYER_ERROR_SEQ_LEN,
    CalibrationSet,
    build_calibration,
    layer_error_windows,
)
from pipelines.rundir import (
    atomic_directory,
    dir_bytes,
    model_dir,
    write_bytes_atomic,
    write_text_atomic,
)
from pipelines.stages.common import StageContext, run_stage
from pipelines.stages.keys import calibration_cache_key, quantize_key

log = logging.getLogger(__name__)


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
    trust = ctx.recipe.model.trust_remote_code
    if quantizer.prequantized:
        if not ctx.recipe.scheme.source:
            raise QevalError(
                f"scheme {ctx.scheme} evaluates an existing checkpoint but names none: set PREQUANTIZED=<hub id or path> "
                "(--prequantized) or `source:` in its recipe"
            )
        from pipelines.quantizers.prequantized import detect_format

        detect_format(ctx.recipe.scheme.source, trust_remote_code=trust)
        return quantizer, params, []
    shapes = base_layer_shapes(ctx.base_source, ctx.recipe.model.revision, trust_remote_code=trust)
    ignored = match_ignore(ctx.recipe.scheme.ignore, sorted(shapes))
    quantizer.check_model(params, {n: s for n, s in shapes.items() if n not in ignored})
    return quantizer, params, ignored


def base_layer_shapes(source: str, revision: str | None, *, trust_remote_code: bool = False
                      ) -> dict[str, tuple[int, int]]:
    """Linear layer shapes read from the config alone (meta tensors, no weights loaded)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loading.load_config(source, revision, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return layer_errors.linear_layer_shapes(skeleton)


def calibration_set(ctx: StageContext, tokenizer) -> CalibrationSet:
    """Tokenize calibration text once per model and settings; every scheme of a sweep reuses it."""
    import pickle

    cal = ctx.recipe.calibration
    # Keyed by the data's content (not its path); written under a unique temporary name,
    # since schemes of concurrent sweeps (or Ray tasks) share the cache.
    cache = model_dir(ctx.model) / ".cache" / f"calibration-{CALIBRATION_FORMAT}-{calibration_cache_key(ctx)}.pkl"
    if cache.is_file():
        with open(cache, "rb") as f:
            return pickle.load(f)
    data_dir = resolve_data_dir(ctx.recipe.data_dir)
    calib = build_calibration(tokenizer, dataset=cal.dataset, n_samples=cal.n_samples, seq_len=cal.seq_len,
                              seed=cal.seed, data_dir=data_dir)
    write_bytes_atomic(cache, pickle.dumps(calib))
    return calib


def run(ctx: StageContext) -> str:
    quantizer, params, ignored = prepare(ctx)
    key = quantize_key(ctx)
    return run_stage(ctx, "quantize", key, lambda: _quantize(ctx, quantizer, params, ignored))


def _quantize(ctx: StageContext, quantizer: Quantizer, params, ignored: list[str]) -> tuple[list[Path], dict]:
    import torch

    recipe, device, trust = ctx.recipe, ctx.device, ctx.recipe.model.trust_remote_code
    source = recipe.scheme.source if quantizer.prequantized else ctx.base_source
    tokenizer = loading.load_tokenizer(ctx.base_source, recipe.model.revision, trust_remote_code=trust)
    calib = calibration_set(ctx, tokenizer) if quantizer.calibrates else None
    request = QuantizeRequest(
        source=source, revision=recipe.model.revision, dtype=ctx.quantize_dtype, device=device, params=params,
        ignore=ignored, calibration=calib, out_dir=ctx.sdir.checkpoint_dir, n_gpus=recipe.model.n_gpus,
        trust_remote_code=trust, storage_dtype=recipe.model.dtype,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with PeakRSS() as rss:
        if quantizer.prequantized:
            outcome = quantizer.quantize(request)  # nothing to write: the checkpoint is the source
        else:
            with atomic_directory(ctx.sdir.checkpoint_dir) as staging:
                request.out_dir = staging
                outcome = quantizer.quantize(request)
                gc.collect()
    duration_s = time.perf_counter() - start
    checkpoint = source if quantizer.prequantized else str(ctx.sdir.checkpoint_dir)
    disk_bytes = dir_bytes(Path(checkpoint)) if Path(checkpoint).is_dir() else None
    baseline_bytes = _baseline_bytes(ctx, quantizer)

    # Reload in this process from disk: proves the checkpoint loads and measures
    # what was saved (never the in-memory model; see the bitsandbytes trap).
    # An engine other than transformers (llama.cpp) scores its tensors itself.
    errors: list[layer_errors.LayerError] = list(outcome.layer_errors)
    heldout = None
    if quantizer.measures_layer_errors:
        seq_len = min(LAYER_ERROR_SEQ_LEN, recipe.model.max_context or LAYER_ERROR_SEQ_LEN)
        heldout = layer_error_windows(tokenizer, data_dir=resolve_data_dir(recipe.data_dir), seq_len=seq_len)
        base = loading.load_dense(ctx.base_source, ctx.compute_dtype, device, revision=recipe.model.revision,
                                 n_gpus=recipe.model.n_gpus, trust_remote_code=trust, stage=loading.REFERENCE_LOAD)
        loading.count_load("quantize")
        quant = quantizer.load(checkpoint, device, ctx.compute_dtype, recipe.model.n_gpus, trust_remote_code=trust)
        errors = layer_errors.measure_layer_errors(
            base, quant, heldout.windows, ignored=set(ignored), max_rows=sum(map(len, heldout.windows)),
            backend_losses=outcome.backend_losses, folds_input_scales=quantizer.folds_input_scales)
        del base, quant
        gc.collect()
    ctx.sdir.quantize_dir.mkdir(parents=True, exist_ok=True)
    outputs = [ctx.sdir.quantize_json]
    if errors:
        write_text_atomic(ctx.sdir.layer_errors_csv, layer_errors.to_csv(errors))
        outputs.append(ctx.sdir.layer_errors_csv)
    result = QuantizeResult(
        scheme=ctx.scheme,
        variant=recipe.scheme.name,
        quantizer=quantizer.key,
        library=quantizer.library,
        library_version=(library_version(quantizer.library) if quantizer.engine == "transformers"
                         else quantizer.library_version()),
        backend=outcome.backend,
        format=outcome.format,
        params=params.model_dump(),
        ignore=ignored,
        calibration=calib.to_dict() if calib is not None else None,
        device=device,
        # GPTQ's result depends on torch's thread count (reductions are split per thread).
        torch_threads=torch.get_num_threads(),
        dtype=ctx.compute_dtype,
        duration_s=round(duration_s, 3),
        peak_rss_bytes=rss.peak_bytes,
        cuda_peak_allocated_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else None,
        checkpoint=checkpoint,
        disk_bytes=disk_bytes,
        baseline_disk_bytes=baseline_bytes,
        compression_ratio=(baseline_bytes / disk_bytes) if (baseline_bytes and disk_bytes) else None,
        emulated=quantizer.emulated_on(device, outcome.format),
        notes=outcome.notes,
        worst_layers=layer_errors.worst(errors, 10),
        layer_error_windows=heldout.to_dict() if heldout is not None else None,
        engine=outcome.engine_info,
    )
    result.write(ctx.sdir.quantize_json)
    if not quantizer.prequantized:
        outputs.insert(0, ctx.sdir.checkpoint_dir)
    return outputs, {"duration_quantize_s": round(duration_s, 3)}


def _baseline_bytes(ctx: StageContext, quantizer: Quantizer) -> int | None:
    """Bytes of the baseline checkpoint (this one, when this scheme is the reference)."""
    if quantizer.is_reference:
        return dir_bytes(ctx.sdir.checkpoint_dir) if ctx.sdir.checkpoint_dir.exists() else None
    qjson = model_dir(ctx.model) / "baseline" / "quantize" / QuantizeResult.FILE
    try:
        baseline = QuantizeResult.read_if_present(qjson)
    except ResultFileError as exc:  # written by an older qeval: rerun the baseline to compare sizes
        log.warning("baseline quantize.json unreadable (%s); compression ratio not computed", exc)
        return None
    return baseline.disk_bytes if baseline is not None else None
