"""Compare rows from MLflow search results, and their rendering as markdown, csv or json."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.signoff.metrics import BASELINE_SCHEME, relative_metrics
from pipelines.tracking.params import KIND_TAG


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (isinstance(value, str) and value == "")


def rows_from_runs(runs, *, model: str | None = None, sweep_id: str | None = None) -> list[dict]:
    """Turn an ``mlflow.search_runs`` DataFrame into compare rows for one sweep (latest by default).

    Each row: scheme, variant, backend, device, signoff, run_id, sweep_id and
    every metric, with delta.* / recovery.* recomputed against the sweep's
    baseline row. Baseline first, then the sweep's scheme order.
    """
    records = runs.to_dict("records") if hasattr(runs, "to_dict") else list(runs)
    if model is not None:
        records = [r for r in records if r.get("tags.model") == model]
    parents = [r for r in records if r.get(f"tags.{KIND_TAG}") == "sweep"]
    if sweep_id is None:
        candidates = parents or [r for r in records if _present(r.get("tags.sweep_id"))]
        if not candidates:
            return []
        sweep_id = max(candidates, key=lambda r: r.get("start_time"))["tags.sweep_id"]
    children = [r for r in records if r.get(f"tags.{KIND_TAG}") == "scheme" and r.get("tags.sweep_id") == sweep_id]
    latest: dict[str, dict] = {}
    for record in sorted(children, key=lambda r: r.get("start_time")):
        latest[record["tags.scheme"]] = record  # one row per scheme even if a store has strays
    rows = []
    for scheme, record in latest.items():
        row: dict[str, Any] = {"scheme": scheme}
        for tag in ("variant", "backend", "device", "signoff"):
            value = record.get(f"tags.{tag}")
            if _present(value):
                row[tag] = value
        row["run_id"] = record.get("run_id")
        row["sweep_id"] = sweep_id
        for column, value in record.items():
            if column.startswith("metrics.") and _present(value):
                row[column.removeprefix("metrics.")] = float(value)
        rows.append(row)
    baseline = next((r for r in rows if r["scheme"] == BASELINE_SCHEME), None)
    if baseline is not None:
        base_metrics = _plain_metrics(baseline)
        for row in rows:
            for key in [k for k in row if k.startswith(("delta.", "recovery."))]:
                del row[key]
            row.update(relative_metrics(_plain_metrics(row), base_metrics))
    order = _scheme_order(parents, sweep_id)
    rows.sort(key=lambda r: (r["scheme"] != BASELINE_SCHEME,
                             order.index(r["scheme"]) if r["scheme"] in order else len(order), r["scheme"]))
    return rows


def _plain_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, float) and not k.startswith(("delta.", "recovery."))}


def _scheme_order(parents: Sequence[Mapping[str, Any]], sweep_id: str) -> list[str]:
    for parent in parents:
        if parent.get("tags.sweep_id") == sweep_id and _present(parent.get("params.sweep.schemes")):
            with contextlib.suppress(ValueError, TypeError):
                return list(json.loads(parent["params.sweep.schemes"]))
    return []


_TAG_COLUMNS = ("scheme", "variant", "backend", "device", "signoff")
_METRIC_ORDER = ("ppl.", "delta.ppl.", "word_ppl.", "bits_per_byte.", "acc_mean", "recovery.acc_mean",
                 "acc.", "recovery.acc.", "acc_norm.", "recovery.acc_norm.", "acc_stderr.",
                 "acc_norm_stderr.", "mem.", "speed.", "quant.")


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = list(dict.fromkeys(k for row in rows for k in row))
    tags = [c for c in _TAG_COLUMNS if c in present]

    def rank(column: str) -> tuple[int, str]:
        for i, prefix in enumerate(_METRIC_ORDER):
            if column == prefix or (prefix.endswith(".") and column.startswith(prefix)):
                return i, column
        return len(_METRIC_ORDER), column

    rest = sorted((c for c in present if c not in tags and c not in ("run_id", "sweep_id")), key=rank)
    tail = [c for c in ("run_id",) if c in present]
    return tags + rest + tail


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], fmt: str = "markdown",
                 columns: Sequence[str] | None = None) -> str:
    """Render compare rows as ``markdown``, ``csv`` or ``json`` (all columns unless ``columns`` is given).

    ``columns`` entries ending in "." select every column with that prefix
    (e.g. ``["scheme", "ppl.", "delta.ppl.", "recovery.acc_mean"]``).
    """
    all_columns = _columns(rows)
    if columns is not None:
        all_columns = [c for c in all_columns
                       if any(c == want or (want.endswith(".") and c.startswith(want)) for want in columns)]
    if fmt == "json":
        return json.dumps([{c: row[c] for c in all_columns if c in row} for row in rows], indent=2, default=str) + "\n"
    columns = all_columns
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown table format {fmt!r}; choose markdown, csv or json")
