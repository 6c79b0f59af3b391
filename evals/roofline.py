"""Memory-bandwidth roofline for batch-1 decode: how close measured tokens/s is to the bound.

Batch-1 decode reads every weight once per token plus the KV cache so far, and does little
arithmetic per byte, so its ceiling is device bandwidth / bytes read per token. The
bandwidth is measured with one large copy and cached per device, since it takes seconds.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path

from evals.speed import device_name, synchronize
from pipelines.rundir.atomic import write_json_atomic

log = logging.getLogger(__name__)

CPU_COPY_BYTES = 256 * 2**20  # well past any last-level cache
CUDA_COPY_BYTES = 2 * 2**30


class RooflineError(ValueError):
    """Roofline input is unusable; the message names the fix."""


def _bandwidth_key(device) -> str:
    """Return the cache key of a device: its name, plus the thread count on CPU."""
    import torch

    device = torch.device(device)
    name = device_name(device)
    # CPU copy bandwidth scales with the threads that run it.
    return f"{name} ({torch.get_num_threads()} threads)" if device.type == "cpu" else name


def measure_bandwidth(device="cpu", size_bytes: int | None = None, iters: int = 10, warmup: int = 2) -> dict:
    """Measure device memory bandwidth with ``dst.copy_(src)``, counting read + written bytes."""
    import torch

    device = torch.device(device)
    if size_bytes is None:
        size_bytes = CUDA_COPY_BYTES if device.type == "cuda" else CPU_COPY_BYTES
    if size_bytes < 1 or iters < 1:
        raise RooflineError(f"need size_bytes >= 1 and iters >= 1, got {size_bytes} and {iters}")
    src = torch.ones(size_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(warmup):
        dst.copy_(src)
    synchronize(device)
    samples_s = []
    for _ in range(iters):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        samples_s.append(time.perf_counter() - start)
    del src, dst
    moved_bytes = 2 * size_bytes  # each byte is read once and written once
    rates = sorted(moved_bytes / s for s in samples_s)
    median_bytes_s = statistics.median(rates)
    return {
        "device": str(device),
        "device_name": _bandwidth_key(device),
        "method": "dst.copy_(src), bytes read + written",
        "size_bytes": size_bytes,
        "iters": iters,
        "torch_threads": torch.get_num_threads(),
        "bandwidth_bytes_s": median_bytes_s,
        "bandwidth_gb_s": median_bytes_s / 1e9,
        "min_gb_s": rates[0] / 1e9,
        "max_gb_s": rates[-1] / 1e9,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def cached_bandwidth(device, cache_path: Path, **measure_kwargs) -> dict:
    """Return the device bandwidth from a JSON cache keyed by device name, measuring on a miss."""
    cache_path = Path(cache_path)
    key = _bandwidth_key(device)
    cache: dict = {}
    if cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable bandwidth cache %s: %s", cache_path, exc)
    if key in cache:
        return {**cache[key], "cached": True}
    result = measure_bandwidth(device, **measure_kwargs)
    cache[key] = result
    write_json_atomic(cache_path, cache)  # readers never see a half-written cache
    return {**result, "cached": False}


def roofline(
    decode_tok_s_bs1: float,
    weights_bytes: int,
    kv_bytes_per_token: int,
    context_len: float,
    bandwidth_bytes_s: float,
    *,
    unread_weight_bytes: int = 0,
) -> dict:
    """Return the bandwidth bound on batch-1 decode and the fraction of it measured.

    Bytes read per token = resident weights (less ``unread_weight_bytes``, e.g. an untied
    input embedding of which decode gathers one row) + KV bytes per token * mean context.
    """
    named = {
        "decode_tok_s_bs1": decode_tok_s_bs1, "weights_bytes": weights_bytes,
        "kv_bytes_per_token": kv_bytes_per_token, "context_len": context_len,
        "bandwidth_bytes_s": bandwidth_bytes_s, "unread_weight_bytes": unread_weight_bytes,
    }
    for name, value in named.items():
        if value is None or not math.isfinite(value) or value < 0:
            raise RooflineError(f"{name} must be a finite number >= 0, got {value!r}")
    bytes_per_token = weights_bytes - unread_weight_bytes + kv_bytes_per_token * context_len
    if bytes_per_token <= 0 or bandwidth_bytes_s <= 0:
        raise RooflineError(
            f"bytes per token ({bytes_per_token}) and bandwidth ({bandwidth_bytes_s}) must be positive; "
            "pass the resident weight bytes and a measured bandwidth"
        )
    bound_tok_s = bandwidth_bytes_s / bytes_per_token
    return {
        "bandwidth_gb_s": bandwidth_bytes_s / 1e9,
        "bytes_per_token": bytes_per_token,
        "bound_tok_s": bound_tok_s,
        "decode_tok_s_bs1": decode_tok_s_bs1,
        "frac": decode_tok_s_bs1 / bound_tok_s,
        "weights_bytes": weights_bytes,
        "unread_weight_bytes": unread_weight_bytes,
        "kv_bytes_per_token": kv_bytes_per_token,
        "context_len": context_len,
    }
