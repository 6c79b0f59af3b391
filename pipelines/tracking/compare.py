"""``qeval compare``: scheme x metric rows of a sweep, from MLflow or from the run directories.

Both sources give the same rows (tags, metrics, deltas against the baseline)
and so the same table: MLflow holds what tracking uploaded from the run
directories, and the run directories are read with the same functions that
upload them. MLflow is read when it holds the sweep; otherwise, or when asked,
the run directories are, and the source line says which and why.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.errors import QevalError
from pipelines.rundir import Manifest, model_dir, read_json_if_readable, scheme_dir
from pipelines.signoff.metrics import BASELINE_SCHEME, relative_metrics, sweep_rows
from pipelines.tracking.params import KIND_TAG, scheme_files, scheme_tags
from pipelines.tracking.store import (
    EXPERIMENT_ENV,
    SYNC_COMMAND,
    client,
    display_uri,
    experiment_name,
    fast_fail_http,
    filter_value,
    is_unreachable,
    missing_local_store,
    short,
    tracking_uri,
)

_TAG_COLUMNS = ("scheme", "variant", "backend", "device", "signoff")


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
        for tag in _TAG_COLUMNS[1:]:
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


_METRIC_ORDER = ("ppl.", "delta.ppl.", "word_ppl.", "bits_per_byte.", "acc_mean", "recovery.acc_mean",
                 "acc.", "recovery.acc.", "acc_norm.", "recovery.acc_norm.", "acc_stderr.",
                 "acc_norm_stderr.", "fidelity.", "flips.", "mem.", "speed.", "serve.", "quant.")


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


# --------------------------------------------------------------------------- reading a sweep back


def _experiment_for_reading(model: str, experiment: str | None) -> str:
    if experiment or os.environ.get(EXPERIMENT_ENV, "").strip():
        return experiment_name(model, experiment)
    sweep = read_json_if_readable(model_dir(model) / "sweep.json") or {}
    return (sweep.get("mlflow") or {}).get("experiment") or experiment_name(model)


def _rows_from_mlflow(model: str, sweep_id: str | None, name: str, uri: str) -> list[dict]:
    """Rows of the sweep from the store at ``uri`` (empty when the experiment or the sweep is not there)."""
    import mlflow

    with fast_fail_http(uri):
        mlflow.set_tracking_uri(uri)
        exp = client(uri).get_experiment_by_name(name)
        if exp is None:
            return []
        quoted = filter_value(model)
        runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], output_format="pandas",
                                  filter_string=f"tags.model = {quoted}" if quoted else "")
    return rows_from_runs(runs, model=model, sweep_id=sweep_id)


def rows_from_run_dirs(model: str, sweep_id: str | None = None) -> tuple[list[dict], str]:
    """Rows of the sweep in the run directories, with the same tags and metrics tracking uploads.

    Returns (rows, sweep id). The run directories hold one sweep per model, the latest.

    Raises:
        QevalError: there is no sweep of ``model`` under the runs root, or not the one asked for.
    """
    mdir = model_dir(model)
    sweep = read_json_if_readable(mdir / "sweep.json")
    if not isinstance(sweep, dict) or not sweep.get("sweep_id"):
        raise QevalError(f"no sweep of {model!r} in the run directories: {mdir / 'sweep.json'} is missing. "
                         "Run the sweep first, or set QEVAL_RUNS_DIR to the runs folder it wrote.")
    current = str(sweep["sweep_id"])
    if sweep_id is not None and sweep_id != current:
        raise QevalError(f"the run directories under {mdir} hold sweep {current!r}, not {sweep_id!r}; "
                         "earlier sweeps are only in MLflow (set MLFLOW_TRACKING_URI to its store).")
    schemes = sorted(sweep.get("schemes") or [], key=lambda s: s != BASELINE_SCHEME)
    signoff = read_json_if_readable(mdir / "signoff.json")
    rows = []
    for metrics in sweep_rows(model, schemes):
        scheme = metrics["scheme"]
        sdir = scheme_dir(model, scheme)
        tags = scheme_tags(model, scheme, current, Manifest(sdir), scheme_files(sdir), signoff)
        row: dict[str, Any] = {"scheme": scheme, **{t: tags[t] for t in _TAG_COLUMNS[1:] if t in tags}}
        row["sweep_id"] = current
        row.update({k: v for k, v in metrics.items() if k != "scheme"})
        rows.append(row)
    if not rows:
        raise QevalError(f"sweep {current!r} of {model!r} lists {', '.join(schemes) or 'no schemes'}, but none has "
                         f"a run directory under {mdir}. Run the sweep again.")
    return rows, current


def compare(model: str, *, sweep_id: str | None = None, experiment: str | None = None,
            from_runs: bool = False) -> tuple[list[dict], str]:
    """Return the scheme x metric rows of a sweep, with deltas vs the baseline, and where they came from.

    MLflow is read when its store exists, is reachable and holds the sweep;
    otherwise (or with ``from_runs``) the run directories are, which hold the
    latest sweep of each model. The second value is one line naming the source
    and, for the run directories, why MLflow was not read.

    Raises:
        QevalError: neither MLflow nor the run directories hold the sweep (the message names both fixes).
    """
    uri = tracking_uri()
    shown_uri = display_uri(uri)
    if from_runs:
        why = "as asked (--from-runs)"
    elif (missing := missing_local_store(uri)) is not None:
        why = f"no MLflow store at {missing}"
    else:
        name = _experiment_for_reading(model, experiment)
        try:
            rows = _rows_from_mlflow(model, sweep_id, name, uri)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            why = f"MLflow at {shown_uri} is unreachable ({short(exc)})"
        else:
            if rows:
                return rows, f"source: MLflow {shown_uri}, experiment {name}, sweep {rows[0]['sweep_id']}"
            which = f"sweep {sweep_id!r}" if sweep_id else "any sweep"
            why = f"MLflow experiment {name!r} at {shown_uri} has no runs of {model!r} for {which}"
    try:
        rows, current = rows_from_run_dirs(model, sweep_id)
    except QevalError as exc:
        if from_runs:
            raise
        raise QevalError(f"{why}, and {exc} To read MLflow, run the sweep or `{SYNC_COMMAND}` first.") from exc
    return rows, f"source: run directories {model_dir(model)}, sweep {current} ({why})"
