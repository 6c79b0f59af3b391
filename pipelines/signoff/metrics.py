"""Stable metric names computed from a scheme's run directory (no MLflow here).

Every number the pipeline reports under a name is read from the files the
stages wrote, so MLflow, the compare table, the plots and the sign-off report
all agree. A missing file means the metrics it would give are absent, never
zero. The names below are a public interface: the README reproduces this
table, dashboards and notebooks filter on them, so rename nothing.

``<dataset>`` is a perplexity dataset key of ``eval/perplexity.json``
(``wikitext2``, ``c4``), ``<task>`` an lm-eval task key of ``eval/tasks.json``
and ``<N>`` a benchmark batch size of ``bench/speed.json``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pipelines.rundir import SchemeDir, model_dir, read_json_if_readable, scheme_dir

log = logging.getLogger(__name__)

BASELINE_SCHEME = "baseline"
GIB = 1024**3

# name pattern -> (source file, meaning). The README reproduces this table.
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "ppl.<dataset>": ("eval/perplexity.json", "token-level perplexity (protocol, seq_len and stride are params)"),
    "word_ppl.<dataset>": ("eval/perplexity.json", "word-level perplexity"),
    "bits_per_byte.<dataset>": ("eval/perplexity.json", "bits per UTF-8 byte"),
    "acc.<task>": ("eval/tasks.json", "lm-eval accuracy"),
    "acc_stderr.<task>": ("eval/tasks.json", "lm-eval standard error of acc"),
    "acc_norm.<task>": ("eval/tasks.json", "lm-eval length-normalised accuracy (tasks that have it)"),
    "acc_norm_stderr.<task>": ("eval/tasks.json", "lm-eval standard error of acc_norm"),
    "acc_mean": ("eval/tasks.json", "unweighted mean of acc.<task> over the tasks run"),
    "mem.disk_gib": ("bench/memory.json (else quantize/quantize.json)", "checkpoint size on disk, GiB"),
    "mem.weights_gib": ("bench/memory.json", "resident weight bytes after loading, GiB"),
    "mem.peak_gib": ("bench/memory.json", "peak memory: CUDA peak allocated when measured on a GPU, else peak process RSS, GiB"),
    "speed.prefill_tok_s.bs<N>": ("bench/speed.json", "median prefill tokens/s at batch size N"),
    "speed.decode_tok_s.bs<N>": ("bench/speed.json", "median decode tokens/s at batch size N"),
    "speed.ttft_ms.p50.bs<N>": ("bench/speed.json", "median time to first token, ms"),
    "speed.ttft_ms.p99.bs<N>": ("bench/speed.json", "p99 time to first token, ms"),
    "speed.itl_ms.p50.bs<N>": ("bench/speed.json", "median inter-token latency, ms"),
    "speed.itl_ms.p99.bs<N>": ("bench/speed.json", "p99 inter-token latency, ms"),
    "speed.roofline_frac.bs1": ("bench/speed.json", "decode tok/s at bs1 as a fraction of the memory-bandwidth bound"),
    "quant.duration_s": ("quantize/quantize.json", "wall time of quantization, s"),
    "quant.peak_gib": ("quantize/quantize.json", "peak process RSS while quantizing, GiB"),
    "quant.compression_ratio": ("quantize/quantize.json", "baseline bytes / quantized bytes"),
    "delta.ppl.<dataset>": ("baseline + scheme", "ppl.<dataset> of the scheme minus the baseline's (lower is better)"),
    "recovery.acc.<task>": ("baseline + scheme", "acc.<task> of the scheme divided by the baseline's (1.0 = no loss)"),
    "recovery.acc_norm.<task>": ("baseline + scheme", "acc_norm.<task> of the scheme divided by the baseline's"),
    "recovery.acc_mean": ("baseline + scheme", "mean acc of the scheme / mean acc of the baseline, over the tasks both ran"),
}

# When several prompt lengths were benchmarked at one batch size, the first
# successful result listed in speed.json gives the bs<N> metrics.
SPEED_FIELDS = (
    ("prefill_tok_s", ("median",), "speed.prefill_tok_s.bs{bs}"),
    ("decode_tok_s", ("median",), "speed.decode_tok_s.bs{bs}"),
    ("ttft_ms", ("p50", "median"), "speed.ttft_ms.p50.bs{bs}"),
    ("ttft_ms", ("p99",), "speed.ttft_ms.p99.bs{bs}"),
    ("itl_ms", ("p50", "median"), "speed.itl_ms.p50.bs{bs}"),
    ("itl_ms", ("p99",), "speed.itl_ms.p99.bs{bs}"),
)

TASK_FIELDS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


def metric_table_markdown() -> str:
    """Render METRIC_NAMES as a Markdown table (for the README)."""
    lines = ["| metric | from | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {src} | {meaning} |" for name, (src, meaning) in METRIC_NAMES.items()]
    return "\n".join(lines)


def _number(value: Any) -> float | None:
    """Return ``value`` as a finite float, or None for missing / non-numeric / NaN."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _put(out: dict[str, float], name: str, value: Any, scale: float = 1.0) -> None:
    number = _number(value)
    if number is not None:
        out[name] = number / scale


def _perplexity_metrics(sdir: SchemeDir) -> dict[str, float]:
    data = read_json_if_readable(sdir.eval_dir / "perplexity.json") or {}
    out: dict[str, float] = {}
    for dataset, entry in data.items():
        if not isinstance(entry, Mapping):
            continue
        _put(out, f"ppl.{dataset}", entry.get("ppl"))
        _put(out, f"word_ppl.{dataset}", entry.get("word_ppl"))
        _put(out, f"bits_per_byte.{dataset}", entry.get("bits_per_byte"))
    return out


def _task_metrics(sdir: SchemeDir) -> dict[str, float]:
    data = read_json_if_readable(sdir.eval_dir / "tasks.json") or {}
    out: dict[str, float] = {}
    for task, entry in (data.get("results") or {}).items():
        if not isinstance(entry, Mapping):
            continue
        for field in TASK_FIELDS:
            # lm-eval keys carry a ",none" filter suffix unless the stage stripped it.
            _put(out, f"{field}.{task}", entry.get(field, entry.get(f"{field},none")))
    accs = [v for k, v in out.items() if k.startswith("acc.")]
    if accs:
        out["acc_mean"] = sum(accs) / len(accs)
    return out


def _memory_metrics(sdir: SchemeDir, quantize: Mapping[str, Any]) -> dict[str, float]:
    data = read_json_if_readable(sdir.bench_dir / "memory.json") or {}
    out: dict[str, float] = {}
    _put(out, "mem.disk_gib", data.get("disk_bytes", quantize.get("disk_bytes")), GIB)
    _put(out, "mem.weights_gib", data.get("weights_bytes"), GIB)
    peak = data.get("cuda_peak_allocated_bytes")
    _put(out, "mem.peak_gib", peak if _number(peak) is not None else data.get("peak_rss_bytes"), GIB)
    return out


def _speed_metrics(sdir: SchemeDir) -> dict[str, float]:
    data = read_json_if_readable(sdir.bench_dir / "speed.json") or {}
    out: dict[str, float] = {}
    seen_batch_sizes: set[int] = set()
    for result in data.get("results") or []:
        bs = result.get("batch_size")
        if result.get("status", "ok") != "ok" or bs is None or bs in seen_batch_sizes:
            continue
        seen_batch_sizes.add(bs)
        for field, stats, name in SPEED_FIELDS:
            values = result.get(field) or {}
            if not isinstance(values, Mapping):
                _put(out, name.format(bs=bs), values)
                continue
            stat = next((s for s in stats if s in values), None)
            if stat is not None:
                _put(out, name.format(bs=bs), values[stat])
    _put(out, "speed.roofline_frac.bs1", (data.get("roofline") or {}).get("frac"))
    return out


def _quantize_metrics(quantize: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    _put(out, "quant.duration_s", quantize.get("duration_s"))
    _put(out, "quant.peak_gib", quantize.get("peak_rss_bytes"), GIB)
    _put(out, "quant.compression_ratio", quantize.get("compression_ratio"))
    return out


def scheme_metrics(sdir: SchemeDir) -> dict[str, float]:
    """Return every documented metric the scheme's run directory has files for."""
    quantize = read_json_if_readable(sdir.quantize_json) or {}
    out: dict[str, float] = {}
    out.update(_perplexity_metrics(sdir))
    out.update(_task_metrics(sdir))
    out.update(_memory_metrics(sdir, quantize))
    out.update(_speed_metrics(sdir))
    out.update(_quantize_metrics(quantize))
    return out


def relative_metrics(metrics: Mapping[str, float], baseline_metrics: Mapping[str, float]) -> dict[str, float]:
    """Return ``delta.ppl.*`` (scheme - baseline) and ``recovery.acc*.*`` (scheme / baseline)."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        base = baseline_metrics.get(name)
        if base is None or value is None:
            continue
        if name.startswith("ppl."):
            out[f"delta.{name}"] = value - base
        elif name.startswith(("acc.", "acc_norm.")) and base != 0:
            out[f"recovery.{name}"] = value / base
    common = [k for k in metrics if k.startswith("acc.") and k in baseline_metrics]
    base_mean = sum(baseline_metrics[k] for k in common) / len(common) if common else 0.0
    if common and base_mean != 0:
        out["recovery.acc_mean"] = (sum(metrics[k] for k in common) / len(common)) / base_mean
    return out


def sweep_rows(model: str, schemes: Iterable[str]) -> list[dict[str, Any]]:
    """Return one row per scheme (``scheme`` + metrics + deltas vs the baseline) from the run tree.

    The baseline is the ``baseline`` scheme of the same model, used whether or
    not it is listed in ``schemes``.
    """
    schemes = list(schemes)
    baseline_dir = scheme_dir(model, BASELINE_SCHEME)
    baseline = scheme_metrics(baseline_dir) if baseline_dir.root.is_dir() else {}
    rows = []
    for scheme in schemes:
        sdir = scheme_dir(model, scheme)
        if not sdir.root.is_dir():
            continue
        metrics = scheme_metrics(sdir)
        row: dict[str, Any] = {"scheme": scheme, **metrics}
        if baseline:
            row.update(relative_metrics(metrics, baseline))
        rows.append(row)
    return rows


def sanitize_metric_name(name: str) -> str:
    """Replace characters MLflow rejects in metric keys (task names are free-form)."""
    return re.sub(r"[^0-9A-Za-z_\-. /:]", "_", name)


def sweep_schemes(model: str) -> list[str]:
    """Return the schemes listed in runs/<model>/sweep.json (empty when it is absent)."""
    data = read_json_if_readable(model_dir(model) / "sweep.json") or {}
    return list(data.get("schemes") or [])
