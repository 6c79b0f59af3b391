"""Logging a sweep: one parent run per sweep, one nested child run per scheme.

The run directories stay the source of truth: every upload re-reads them, and
run ids are kept beside them (``sweep.json`` and each ``manifest.json``) so a
rerun or a ``qeval sync`` updates the same runs. An unreachable server leaves
the sweep finished and marked unsynced.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.errors import QevalError
from pipelines.rundir import (
    Manifest,
    SchemeDir,
    model_dir,
    read_json_if_readable,
    scheme_dir,
    stable_hash,
    update_json,
)
from pipelines.signoff.metrics import BASELINE_SCHEME, relative_metrics, scheme_metrics, sweep_rows
from pipelines.tracking import runs
from pipelines.tracking.compare import format_table
from pipelines.tracking.params import (
    KIND_TAG,
    dataset_uses,
    environment_params,
    flatten,
    scheme_files,
    scheme_params,
    scheme_tags,
    signoff_verdict,
    stage_status,
)
from pipelines.tracking.redaction import env_secrets, redact_params
from pipelines.tracking.store import (
    EXPERIMENT_ENV,
    SYNC_COMMAND,
    client,
    display_uri,
    experiment_name,
    fast_fail_http,
    is_unreachable,
    short,
    tracking_uri,
)

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
# Artifacts: (path relative to the scheme dir, artifact directory in the run).
SCHEME_ARTIFACT_FILES = (
    ("recipe.yaml", ""),
    ("quantize/quantize.json", "quantize"),
    ("quantize/layer_errors.csv", "quantize"),
)
SCHEME_ARTIFACT_GLOBS = (("eval", "*.json", "eval"), ("bench", "*.json", "bench"))
SIGNOFF_FILES = ("signoff.json", "signoff.md", "signoff.html")


def _load_sweep(model: str, schemes: Sequence[str]) -> dict[str, Any]:
    path = model_dir(model) / "sweep.json"
    sweep = read_json_if_readable(path)
    if not isinstance(sweep, dict):
        sweep = {"sweep_id": stable_hash({"model": model, "schemes": list(schemes), "at": time.time()}),
                 "model": model, "schemes": list(schemes)}
        log.info("%s is missing; starting a sweep record with id %s", path, sweep["sweep_id"])
    if not sweep.get("sweep_id"):
        raise QevalError(f"{path} has no sweep_id; rerun the sweep to rewrite it")
    return sweep


def _save_sweep(model: str, sweep: Mapping[str, Any]) -> None:
    """Write tracking's part of sweep.json (its MLflow state) under the file's lock.

    Only the keys tracking owns are written back, so a planner or runner that
    updated sweep.json meanwhile loses nothing; the rest is kept from the file.
    """
    def merge(current: dict[str, Any]) -> None:
        for key, value in sweep.items():
            if key == "mlflow" or key not in current:
                current[key] = value

    update_json(model_dir(model) / "sweep.json", merge)


def stored_run_id(sdir: SchemeDir) -> str | None:
    """The MLflow run id kept in the scheme's manifest (None before its first upload)."""
    return (Manifest(sdir).data.get("mlflow") or {}).get("run_id")


def _mark_manifest(sdir: SchemeDir, run_id: str | None, synced: bool) -> None:
    Manifest(sdir).set("mlflow", {"run_id": run_id, "synced": synced})


def _scheme_artifacts(sdir: SchemeDir) -> list[tuple[Path, str]]:
    files = [(sdir.root / rel, artifact_dir) for rel, artifact_dir in SCHEME_ARTIFACT_FILES]
    for sub, pattern, artifact_dir in SCHEME_ARTIFACT_GLOBS:
        files += [(p, artifact_dir) for p in sorted((sdir.root / sub).glob(pattern))]
    files += [(p, "eval/samples") for p in sorted((sdir.eval_dir / "samples").glob("*")) if p.is_file()]
    return files


def _track_scheme(mlflow_client, ctx: dict[str, Any], scheme: str, baseline: Mapping[str, float]) -> str:
    model, sweep_id, parent_id = ctx["model"], ctx["sweep_id"], ctx["parent_run_id"]
    sdir = scheme_dir(model, scheme)
    identity = {"model": model, "scheme": scheme, "sweep_id": sweep_id, KIND_TAG: "scheme", PARENT_TAG: parent_id}
    run = runs.ensure_run(mlflow_client, ctx["experiment_id"], stored_run_id(sdir), identity, run_name=scheme)
    run_id = run.info.run_id
    _mark_manifest(sdir, run_id, synced=False)
    ctx["result"]["child_run_ids"][scheme] = run_id

    secrets = ctx["secrets"]
    files = scheme_files(sdir)
    params = {**scheme_params(sdir, files), **ctx["env_params"]}
    runs.log_params(mlflow_client, run, redact_params(params, secrets))
    tags = scheme_tags(model, scheme, sweep_id, Manifest(sdir), files, ctx["signoff"])
    runs.log_tags(mlflow_client, run_id, tags, secrets)
    metrics = scheme_metrics(sdir)
    if baseline:
        metrics.update(relative_metrics(metrics, baseline))
    runs.log_metrics(mlflow_client, run, metrics)
    runs.log_inputs(mlflow_client, run_id, dataset_uses(files), secrets)
    runs.log_files(mlflow_client, run_id, _scheme_artifacts(sdir), secrets)
    if ctx["log_checkpoint"]:
        runs.log_checkpoint(mlflow_client, run_id, sdir.checkpoint_dir)
    mlflow_client.set_terminated(run_id, stage_status(Manifest(sdir)))
    _mark_manifest(sdir, run_id, synced=True)
    return run_id


def _track_parent_artifacts(mlflow_client, ctx: dict[str, Any], schemes: Sequence[str]) -> None:
    from pipelines.signoff.plots import PLOTS_DIRNAME, write_sweep_plots

    model, parent_id, secrets = ctx["model"], ctx["parent_run_id"], ctx["secrets"]
    mdir = model_dir(model)
    rows = sweep_rows(model, schemes)
    plots = write_sweep_plots(mdir / PLOTS_DIRNAME, rows)
    files = [(mdir / "sweep.json", "")] + [(mdir / name, "signoff") for name in SIGNOFF_FILES]
    files += [(path, "plots") for path in plots.values()]
    with tempfile.TemporaryDirectory(prefix="qeval-compare-") as tmp:
        for fmt, suffix in (("markdown", "md"), ("csv", "csv")):
            table = Path(tmp) / f"compare.{suffix}"
            table.write_text(format_table(rows, fmt), encoding="utf-8")
            files.append((table, ""))
        runs.log_files(mlflow_client, parent_id, files, secrets)


def _sweep_run_name(sweep_id: str) -> str:
    return sweep_id if sweep_id.startswith("sweep") else f"sweep-{sweep_id}"


def _upload_sweep(ctx: dict[str, Any], sweep: dict[str, Any], schemes: Sequence[str]) -> None:
    model, uri = ctx["model"], ctx["uri"]
    mlflow_client = client(uri)
    ctx["experiment_id"] = runs.ensure_experiment(mlflow_client, ctx["experiment"], uri)
    state = sweep["mlflow"]
    identity = {"model": model, "sweep_id": ctx["sweep_id"], KIND_TAG: "sweep"}
    parent = runs.ensure_run(mlflow_client, ctx["experiment_id"], state.get("parent_run_id"), identity,
                             run_name=_sweep_run_name(ctx["sweep_id"]))
    ctx["parent_run_id"] = state["parent_run_id"] = ctx["result"]["parent_run_id"] = parent.info.run_id
    _save_sweep(model, sweep)

    ctx["secrets"] = env_secrets()
    ctx["env_params"] = environment_params()
    ctx["signoff"] = read_json_if_readable(model_dir(model) / "signoff.json")
    sweep_params = flatten({k: sweep.get(k) for k in ("model", "suite", "schemes", "sweep_id")}, "sweep")
    runs.log_params(mlflow_client, parent, redact_params({**sweep_params, **ctx["env_params"]}, ctx["secrets"]))
    parent_tags = {**identity, "signoff": signoff_verdict(ctx["signoff"])}
    runs.log_tags(mlflow_client, parent.info.run_id, {k: v for k, v in parent_tags.items() if v is not None},
                  ctx["secrets"])

    baseline_dir = scheme_dir(model, BASELINE_SCHEME)
    baseline = scheme_metrics(baseline_dir) if baseline_dir.root.is_dir() else {}
    for scheme in schemes:
        if not scheme_dir(model, scheme).root.is_dir():
            log.warning("scheme %s has no run directory under %s; nothing to track", scheme, model_dir(model))
            continue
        _track_scheme(mlflow_client, ctx, scheme, baseline)
    _track_parent_artifacts(mlflow_client, ctx, schemes)
    mlflow_client.set_terminated(parent.info.run_id, "FINISHED")


def track_sweep(model: str, schemes: list[str], *, experiment: str | None = None,
                log_checkpoint: bool = False) -> dict:
    """Log the sweep of ``model`` to MLflow: a parent run and one child run per scheme.

    Reuses the run ids kept in sweep.json and the manifests, so a rerun
    updates the same runs. When the tracking server cannot be reached, logs a
    warning naming ``qeval sync``, leaves the sweep marked unsynced and returns.

    Returns:
        {"parent_run_id", "child_run_ids": {scheme: run_id}, "synced": bool,
         "experiment", "tracking_uri"}
    """
    uri = tracking_uri()
    sweep = _load_sweep(model, schemes)
    state = sweep.setdefault("mlflow", {})
    # Unless one is named (argument, then QEVAL_EXPERIMENT), the experiment the sweep was tracked
    # in: a later `qeval signoff` or `qeval track` updates those runs instead of rebuilding the
    # sweep in the default one.
    named = experiment or os.environ.get(EXPERIMENT_ENV, "").strip()
    name = experiment_name(model, named or state.get("experiment"))
    if state.get("experiment") not in (None, name):
        state.pop("parent_run_id", None)  # runs of another experiment are not this sweep's
    state.update(experiment=name, synced=False, log_checkpoint=bool(log_checkpoint))
    state.setdefault("parent_run_id", None)
    _save_sweep(model, sweep)
    result: dict[str, Any] = {"parent_run_id": state["parent_run_id"], "child_run_ids": {},
                              "synced": False, "experiment": name, "tracking_uri": uri}
    for scheme in schemes:
        sdir = scheme_dir(model, scheme)
        if sdir.root.is_dir():
            stored = stored_run_id(sdir)
            _mark_manifest(sdir, stored, synced=False)
            if stored:
                result["child_run_ids"][scheme] = stored

    ctx = {"model": model, "uri": uri, "experiment": name, "sweep_id": str(sweep["sweep_id"]),
           "log_checkpoint": log_checkpoint, "result": result}
    try:
        with fast_fail_http(uri):
            _upload_sweep(ctx, sweep, schemes)
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        log.warning(
            "MLflow tracking server %s is unreachable (%s). The sweep's results are complete in %s "
            "and marked unsynced; run `%s` to upload them when the server is back.",
            display_uri(uri), short(exc), model_dir(model), SYNC_COMMAND,
        )
        return result
    state["synced"] = True
    _save_sweep(model, sweep)
    result["synced"] = True
    return result
