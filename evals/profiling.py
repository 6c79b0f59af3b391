"""Operator profile of one prefill and a few decode steps, with a Chrome trace to inspect.

The summary (``profile.json``) names the operators that take the time, which tells a
dequantize-then-matmul kernel from a fused one; the trace (``trace.json``) opens in
Perfetto (ui.perfetto.dev) or chrome://tracing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from evals.kernels import linear_layers
from evals.speed import device_name, greedy_step, model_device, random_prompt, synchronize
from pipelines.rundir.atomic import write_json_atomic

log = logging.getLogger(__name__)

TOP_OPERATORS = 25


class ProfilingError(ValueError):
    """Profiling settings are unusable; the message names the fix."""


def _operator_row(event, on_cuda: bool) -> dict:
    """Return one operator's aggregated times in microseconds."""
    row = {
        "name": event.key,
        "calls": int(event.count),
        "self_cpu_time_us": float(event.self_cpu_time_total),
        "cpu_time_total_us": float(event.cpu_time_total),
    }
    if on_cuda:
        row["self_cuda_time_us"] = float(getattr(event, "self_device_time_total", 0.0))
        row["cuda_time_total_us"] = float(getattr(event, "device_time_total", 0.0))
    return row


def _run_prefill_and_decode(model, prompt, decode_steps: int, device, keep_last_logits: bool) -> None:
    """Run a prefill and ``decode_steps`` greedy decode steps, labelled for the trace."""
    import torch

    with torch.profiler.record_function("qeval.prefill"):
        token, cache = greedy_step(model, prompt, None, keep_last_logits)
        synchronize(device)
    for _ in range(decode_steps):
        with torch.profiler.record_function("qeval.decode_step"):
            token, cache = greedy_step(model, token, cache, keep_last_logits)
            synchronize(device)


def profile_model(
    model,
    *,
    out_dir: Path,
    prompt_len: int = 32,
    decode_steps: int = 4,
    device=None,
    batch_size: int = 1,
    top_n: int = TOP_OPERATORS,
) -> dict:
    """Profile one prefill and ``decode_steps`` decode steps; write profile.json and trace.json."""
    import inspect

    import torch
    from torch.profiler import ProfilerActivity, profile

    if prompt_len < 1 or decode_steps < 0 or batch_size < 1:
        raise ProfilingError(
            f"need prompt_len >= 1, decode_steps >= 0 and batch_size >= 1; got {prompt_len}, "
            f"{decode_steps}, {batch_size}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else model_device(model)
    on_cuda = device.type == "cuda"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    prompt = random_prompt(batch_size, prompt_len, int(config.vocab_size), device)
    keep_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            # One untraced pass so lazy initialisation (decompression, kernel selection,
            # allocator growth) does not dominate the profile.
            _run_prefill_and_decode(model, prompt, min(decode_steps, 1), device, keep_last_logits)
            with profile(activities=activities) as prof:
                _run_prefill_and_decode(model, prompt, decode_steps, device, keep_last_logits)
    finally:
        model.train(was_training)

    trace_path = out_dir / "trace.json"
    prof.export_chrome_trace(str(trace_path))
    # Region labels are not operators; their self time is bookkeeping.
    averages = [e for e in prof.key_averages() if not getattr(e, "is_user_annotation", False)
                and not e.key.startswith("qeval.")]
    by_cpu = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:top_n]
    summary = {
        "device": str(device),
        "device_name": device_name(device),
        "linear_layers": linear_layers(model)["layers"],
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "decode_steps": decode_steps,
        "total_self_cpu_time_us": float(sum(e.self_cpu_time_total for e in averages)),
        "top_by_self_cpu": [_operator_row(e, on_cuda) for e in by_cpu],
        "trace": trace_path.name,
    }
    if on_cuda:
        by_cuda = sorted(averages, key=lambda e: getattr(e, "self_device_time_total", 0), reverse=True)
        summary["total_self_cuda_time_us"] = float(
            sum(getattr(e, "self_device_time_total", 0) for e in averages)
        )
        summary["top_by_self_cuda"] = [_operator_row(e, on_cuda) for e in by_cuda[:top_n]]
    write_json_atomic(out_dir / "profile.json", summary)
    log.info("profile written to %s (trace %s)", out_dir / "profile.json", trace_path)
    return summary
