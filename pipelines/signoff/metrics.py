"""Stable metric names computed from a scheme's run directory (no MLflow here).

Every number the pipeline reports under a name is read from the files the
stages wrote, through their dataclasses in ``evals.results``, so MLflow, the
compare table, the plots and the sign-off report all agree. A missing file
means the metrics it would give are absent, never zero. The names below are a
public interface: docs/mlflow.md reproduces this table, dashboards and notebooks
filter on them.

``<dataset>`` is a perplexity dataset key of ``eval/perplexity.json``
(``wikitext2``, ``c4``), ``<task>`` an lm-eval task key of ``eval/tasks.json``.
A speed metric carries the shape it was measured at: ``bs<N>.p<P>.g<G>`` is
batch size N, prompt length P and generation length G (tokens), one row of
``bench/speed.json``, so a suite with two prompt lengths reports both.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from evals.results import MemoryResult, PerplexityFile, QuantizeResult, SpeedResult, TasksResult
from pipelines.rundir import SchemeDir, scheme_dir
from pipelines.signoff.fidelity_metrics import FIDELITY_METRIC_NAMES, fidelity_metrics
from pipelines.signoff.serve_metrics import SERVE_METRIC_NAMES, serve_metrics

log = logging.getLogger(__name__)

BASELINE_SCHEME = "baseline"
GIB = 1024**3
SHAPE = "bs<N>.p<P>.g<G>"

# name pattern -> (source file, meaning). docs/mlflow.md reproduces this table.
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
    f"speed.prefill_tok_s.{SHAPE}": ("bench/speed.json", "median prefill tokens/s at batch size N, prompt P, generation G"),
    f"speed.decode_tok_s.{SHAPE}": ("bench/speed.json", "median decode tokens/s at that shape"),
    f"speed.ttft_ms.p50.{SHAPE}": ("bench/speed.json", "median time to first token at that shape, ms"),
    f"speed.ttft_ms.p99.{SHAPE}": ("bench/speed.json", "p99 time to first token at that shape, ms"),
    f"speed.itl_ms.p50.{SHAPE}": ("bench/speed.json", "median inter-token latency at that shape, ms"),
    f"speed.itl_ms.p99.{SHAPE}": ("bench/speed.json", "p99 inter-token latency at that shape, ms"),
    "speed.roofline_frac.bs1": ("bench/speed.json", "decode tok/s at bs1 (first prompt length) as a fraction of the memory-bandwidth bound"),
    "quant.duration_s": ("quantize/quantize.json", "wall time of quantization, s"),
    "quant.peak_gib": ("quantize/quantize.json", "peak process RSS while quantizing, GiB"),
    "quant.compression_ratio": ("quantize/quantize.json", "baseline bytes / quantized bytes"),
    "delta.ppl.<dataset>": ("baseline + scheme", "ppl.<dataset> of the scheme minus the baseline's (lower is better)"),
    "recovery.acc.<task>": ("baseline + scheme", "acc.<task> of the scheme divided by the baseline's (1.0 = no loss)"),
    "recovery.acc_norm.<task>": ("baseline + scheme", "acc_norm.<task> of the scheme divided by the baseline's"),
    "recovery.acc_mean": ("baseline + scheme", "mean acc of the scheme / mean acc of the baseline, over the tasks both ran"),
    **FIDELITY_METRIC_NAMES,
    **SERVE_METRIC_NAMES,
}

# (row field, statistic of evals.speed.summarize, metric prefix); the shape is appended.
SPEED_FIELDS = (
    ("prefill_tok_s", "median", "speed.prefill_tok_s"),
    ("decode_tok_s", "median", "speed.decode_tok_s"),
    ("ttft_ms", "p50", "speed.ttft_ms.p50"),
    ("ttft_ms", "p99", "speed.ttft_ms.p99"),
    ("itl_ms", "p50", "speed.itl_ms.p50"),
    ("itl_ms", "p99", "speed.itl_ms.p99"),
)

TASK_FIELDS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


def metric_table_markdown() -> str:
    """Render METRIC_NAMES as a Markdown table (for docs/mlflow.md)."""
    lines = ["| metric | from | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {src} | {meaning} |" for name, (src, meaning) in METRIC_NAMES.items()]
    return "\n".join(lines)


def speed_shape(batch_size: int, prompt_len: int, gen_len: int) -> str:
    """The shape suffix of a speed metric: ``bs1.p64.g16``."""
    return f"bs{int(batch_size)}.p{int(prompt_len)}.g{int(gen_len)}"


def speed_metric_at(names: Iterable[str], prefix: str, batch_size: int) -> str | None:
    """Among ``names``, the ``<prefix>.bs<batch_size>.p<P>.g<G>`` metric of the shortest prompt, then generation.

    For a view that shows one number per batch size (a plot axis); None when no shape was measured.
    """
    pattern = re.compile(rf"{re.escape(prefix)}\.bs{int(batch_size)}\.p(\d+)\.g(\d+)")
    shapes = sorted((int(m[1]), int(m[2]), name) for name in set(names) if (m := pattern.fullmatch(name)))
    return shapes[0][2] if shapes else None


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


def _perplexity_metrics(data: PerplexityFile | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for dataset, result in (data.datasets if data else {}).items():
        _put(out, f"ppl.{dataset}", result.ppl)
        _put(out, f"word_ppl.{dataset}", result.word_ppl)
        _put(out, f"bits_per_byte.{dataset}", result.bits_per_byte)
    return out


def _task_metrics(data: TasksResult | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for task, entry in (data.results if data else {}).items():
        for field in TASK_FIELDS:
            # Per-task rows are lm-eval's metrics: acc_norm exists only for some tasks.
            _put(out, f"{field}.{task}", entry.get(field))
    accs = [v for k, v in out.items() if k.startswith("acc.")]
    if accs:
        out["acc_mean"] = sum(accs) / len(accs)
    return out


def _memory_metrics(data: MemoryResult | None, quantize: QuantizeResult | None) -> dict[str, float]:
    out: dict[str, float] = {}
    disk = data.disk_bytes if data is not None else None
    _put(out, "mem.disk_gib", disk if disk is not None else (quantize.disk_bytes if quantize else None), GIB)
    if data is not None:
        _put(out, "mem.weights_gib", data.weights_bytes, GIB)
        peak = data.cuda_peak_allocated_bytes
        _put(out, "mem.peak_gib", peak if peak is not None else data.peak_rss_bytes, GIB)
    return out


def _speed_metrics(data: SpeedResult | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if data is None:
        return out
    seen: set[str] = set()
    for row in data.results:
        # Rows are evals.speed's points: an "ok" row has every field, a failed one None.
        if row["status"] != "ok":
            continue
        shape = speed_shape(row["batch_size"], row["prompt_len"], row["gen_len"])
        if shape in seen:
            log.warning("speed.json has shape %s twice; keeping the first", shape)
            continue
        seen.add(shape)
        for field, stat, prefix in SPEED_FIELDS:
            _put(out, f"{prefix}.{shape}", row[field][stat])
    if data.roofline is not None:  # absent when no batch-1 point succeeded
        _put(out, "speed.roofline_frac.bs1", data.roofline["frac"])
    return out


def _quantize_metrics(quantize: QuantizeResult | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if quantize is not None:
        _put(out, "quant.duration_s", quantize.duration_s)
        _put(out, "quant.peak_gib", quantize.peak_rss_bytes, GIB)
        _put(out, "quant.compression_ratio", quantize.compression_ratio)
    return out


def scheme_metrics(sdir: SchemeDir) -> dict[str, float]:
    """Return every documented metric the scheme's run directory has files for.

    Raises:
        evals.results.ResultFileError: a result file does not have its dataclass's shape
            (written by another qeval version); the message names the stage to rerun.
    """
    quantize = QuantizeResult.read_if_present(sdir.quantize_json)
    out: dict[str, float] = {}
    out.update(_perplexity_metrics(PerplexityFile.read_if_present(sdir.eval_dir / PerplexityFile.FILE)))
    out.update(_task_metrics(TasksResult.read_if_present(sdir.eval_dir / TasksResult.FILE)))
    out.update(_memory_metrics(MemoryResult.read_if_present(sdir.bench_dir / MemoryResult.FILE), quantize))
    out.update(_speed_metrics(SpeedResult.read_if_present(sdir.bench_dir / SpeedResult.FILE)))
    out.update(_quantize_metrics(quantize))
    out.update(fidelity_metrics(sdir))
    out.update(serve_metrics(sdir))
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

