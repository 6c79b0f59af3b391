"""Capacity at a latency SLO, goodput, $ per million output tokens and KV-cache headroom.

Pure arithmetic over the per-level records of serve.json (evals/load.py) and the model config,
so the sign-off can recompute it for another SLO without serving again.
"""

from __future__ import annotations

import math
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def level_meets(level: dict[str, Any], targets: dict[str, float]) -> tuple[bool, list[str]]:
    """Whether one level meets every SLO; the misses, named, when it does not.

    ``targets`` maps e.g. ``ttft_ms_p99`` -> limit; the level's value is level["ttft_ms"]["p99"].
    A level with failed requests, or none completed, does not meet the SLO.
    """
    misses = []
    if level.get("requests_ok", 0) == 0:
        misses.append("no request completed")
    if level.get("errors", 0):
        misses.append(f"{level['errors']} request(s) failed")
    for key, limit in targets.items():
        metric, pct = key.rsplit("_", 1)
        value = (level.get(metric) or {}).get(pct)
        if value is None:
            misses.append(f"{key} not measured")
        elif value > limit:
            misses.append(f"{key} {value:.0f} > {limit:g}")
    return not misses, misses


def capacity(levels: list[dict[str, Any]], targets: dict[str, float]) -> dict[str, Any]:
    """The highest concurrency whose percentiles meet every SLO (0: even one stream misses it)."""
    best, why_not = None, {}
    for level in levels:
        ok, misses = level_meets(level, targets)
        if ok:
            best = level
        else:
            why_not[str(level["concurrency"])] = misses
    return {
        "slo": targets,
        "capacity_concurrency": best["concurrency"] if best else 0,
        "goodput_rps": best["requests_per_s"] if best else 0.0,
        "output_tokens_per_s_at_capacity": best["output_tokens_per_s"] if best else 0.0,
        "misses": why_not,
        # met at the highest level tried: the true capacity may be higher (add levels to find it)
        "lower_bound": bool(best) and best is levels[-1],
    }


def usd_per_million_tokens(price_per_hour: float | None, tokens_per_s: float) -> float | None:
    """$ per million output tokens with the machine fully used at this throughput (None: unknown/none)."""
    if price_per_hour is None or tokens_per_s <= 0:
        return None
    return price_per_hour / (tokens_per_s * 3600.0) * 1e6


def kv_bytes_per_token(config: Any, dtype: str) -> int:
    """Bytes of K and V one token adds, over all layers (grouped-query heads counted once)."""
    text = getattr(config, "text_config", None) or config
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * layers * kv_heads * head_dim * DTYPE_BYTES.get(dtype, 2)


def kv_headroom(memory_gib: float | None, weights_bytes: int, overhead_gib: float, kv_per_token: int,
                context_len: int) -> dict[str, Any]:
    """(memory - weights - overhead) / KV bytes per token, and the sequences of ``context_len`` that fit."""
    out: dict[str, Any] = {"memory_gib": memory_gib, "weights_bytes": weights_bytes, "overhead_gib": overhead_gib,
                           "kv_bytes_per_token": kv_per_token, "context_len": context_len,
                           "kv_tokens": None, "concurrent_sequences": None}
    if memory_gib is None or kv_per_token <= 0:
        return out
    free = memory_gib * 2**30 - weights_bytes - overhead_gib * 2**30
    tokens = max(0, math.floor(free / kv_per_token))
    out.update(kv_tokens=tokens, concurrent_sequences=tokens // max(1, context_len))
    return out
