"""MLflow tracking of a sweep: one parent run per sweep, one nested child run per scheme.

This is the only module that imports mlflow, and it does so inside functions
(the import costs about 1.5 s). The run directories stay the source of truth:
every upload re-reads them, run ids are kept beside them (``sweep.json`` and
each ``manifest.json``) so a rerun or a ``qeval sync`` updates the same runs,
and an unreachable server leaves the sweep finished and marked unsynced.
What does not need mlflow lives beside it: ``tracking_params`` (params, tags
and dataset uses read from the run directory), ``redaction`` (secrets) and
``compare_table`` (compare rows and tables).

Layout in MLflow::

    experiment qeval/<model>   (or QEVAL_EXPERIMENT / the experiment argument)
      parent run  sweep-<sweep_id>   tags: model, sweep_id, qeval.kind=sweep, signoff
        params: sweep.*, lib.*, git_commit, hw.*
        artifacts: sweep.json, signoff/signoff.{json,md,html}, plots/*.png, compare.{md,csv}
      child run   <scheme>           tags: model, scheme, sweep_id, qeval.kind=scheme, variant,
                                           backend, device, signoff, stage.<stage>, mlflow.parentRunId
        params: recipe.* (flattened recipe.yaml), quant.*, calibration.*, eval.*, bench.*,
                lib.*, git_commit, hw.*
        metrics: the names documented in pipelines.signoff.metrics
        inputs: calibration / evaluation datasets with their provenance
        artifacts: recipe.yaml, quantize/, eval/ (+ samples/), bench/ [, quantize/model/]
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.errors import QevalError
from pipelines.rundir import (
    PROJECT_ROOT,
    Manifest,
    SchemeDir,
    model_dir,
    read_json,
    read_json_if_readable,
    runs_root,
    scheme_dir,
    stable_hash,
    write_json_atomic,
)
from pipelines.signoff.metrics import (
    BASELINE_SCHEME,
    relative_metrics,
    sanitize_metric_name,
    scheme_metrics,
    sweep_rows,
)
from pipelines.tracking.compare import format_table, rows_from_runs
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

# Re-exported: callers and tests read tracking.REDACTED.
from pipelines.tracking.redaction import REDACTED as REDACTED
from pipelines.tracking.redaction import (
    env_secrets,
    looks_like_credential,
    redact_params,
    redact_structure,
    redact_text,
)

log = logging.getLogger(__name__)

EXPERIMENT_ENV = "QEVAL_EXPERIMENT"
DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACTS_DIRNAME = "mlartifacts"
SYNC_COMMAND = "qeval sync"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's limits (mlflow.utils.validation: MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH,
# MAX_ENTITY_KEY_LENGTH).
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_KEY_CHARS = 250

# The client retries a refused connection 7 times with exponential backoff
# (minutes); a sweep should notice an outage in seconds. Set only when the user
# has not chosen values, and only while this module talks to a server.
FAST_FAIL_HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

# Messages of the exceptions MLflow's REST client wraps a network failure in.
UNREACHABLE_MESSAGES = (
    "max retries exceeded",
    "connection refused",
    "failed to establish a new connection",
    "connection aborted",
    "connection reset",
    "remotedisconnected",
    "timed out",
    "timeout exception",
    "name or service not known",
    "temporary failure in name resolution",
)
UNREACHABLE_ERROR_CODES = {"TEMPORARILY_UNAVAILABLE"}

# Artifacts: (path relative to the scheme dir, artifact directory in the run).
SCHEME_ARTIFACT_FILES = (
    ("recipe.yaml", ""),
    ("quantize/quantize.json", "quantize"),
    ("quantize/layer_errors.csv", "quantize"),
)
SCHEME_ARTIFACT_GLOBS = (("eval", "*.json", "eval"), ("bench", "*.json", "bench"))
SIGNOFF_FILES = ("signoff.json", "signoff.md", "signoff.html")
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".csv", ".md", ".html", ".txt"}


# --------------------------------------------------------------------------- where


def tracking_uri() -> str:
    """Return ``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{PROJECT_ROOT / DEFAULT_DB_NAME}"


def experiment_name(model: str, experiment: str | None = None) -> str:
    """Return the experiment for ``model``: the argument, else ``QEVAL_EXPERIMENT``, else ``qeval/<model>``."""
    return experiment or os.environ.get(EXPERIMENT_ENV, "").strip() or f"qeval/{model}"


def _artifact_location(uri: str) -> str | None:
    """Keep a SQLite store's artifacts beside its database (MLflow's default is ./mlruns of the cwd)."""
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    db_path = Path(uri.removeprefix("sqlite:///"))
    return str((db_path.parent if db_path.is_absolute() else Path.cwd() / db_path.parent).resolve()
               / DEFAULT_ARTIFACTS_DIRNAME)


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def _fast_fail_http(uri: str) -> Iterator[None]:
    """Lower MLflow's HTTP retries and timeout (unless the user set them) while talking to ``uri``."""
    if not _is_remote(uri):
        yield
        return
    added = [k for k in FAST_FAIL_HTTP_ENV if k not in os.environ]
    for key in added:
        os.environ[key] = FAST_FAIL_HTTP_ENV[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _is_unreachable(exc: BaseException) -> bool:
    """Tell a network outage (retry later) from a real error (raise)."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | ConnectionError | TimeoutError | socket.timeout):
            return True
        if getattr(current, "error_code", None) in UNREACHABLE_ERROR_CODES:
            return True
        if type(current).__module__.startswith(("mlflow", "urllib3", "requests")):
            message = str(current).lower()
            if any(pattern in message for pattern in UNREACHABLE_MESSAGES):
                return True
        current = current.__cause__ or current.__context__
    return False


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)




# --------------------------------------------------------------------------- MLflow writes


def _ensure_experiment(client, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        log.warning("experiment %s was deleted; restoring it to log the sweep", name)
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _get_run(client, run_id: str | None):
    """Return the run, or None when the store has no such run (deleted or another store)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if _is_unreachable(exc) or exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return None if run.info.lifecycle_stage == "deleted" else run


def _filter_value(value: str) -> str | None:
    return None if "'" in value else f"'{value}'"


def _ensure_run(client, experiment_id: str, stored_run_id: str | None, identity: Mapping[str, str],
                run_name: str):
    """Reuse the stored run when it is the same run (experiment and identity tags), else find or create one.

    The search by identity tags catches a run that was created but whose id
    never reached the run directory (a crash or an outage after create_run).
    """
    run = _get_run(client, stored_run_id)
    if run is not None and run.info.experiment_id == experiment_id and all(
        run.data.tags.get(k) == v for k, v in identity.items()
    ):
        return run
    if stored_run_id and run is None:
        log.info("run %s is no longer in the tracking store; creating a new one", stored_run_id)
    clauses = []
    for key, value in identity.items():
        quoted = _filter_value(value)
        if quoted is None:
            clauses = []
            break
        clauses.append(f"tags.`{key}` = {quoted}")
    if clauses:
        found = client.search_runs([experiment_id], filter_string=" and ".join(clauses),
                                   order_by=["attributes.start_time ASC"], max_results=10)
        if found:
            if len(found) > 1:
                log.warning("%d runs match %s; updating the oldest, %s", len(found), dict(identity),
                            found[0].info.run_id)
            return found[0]
    return client.create_run(experiment_id, tags=dict(identity), run_name=run_name)


def _log_params(client, run, params: Mapping[str, str]) -> None:
    """Log params not yet on the run; a changed value is kept as first logged (params are immutable)."""
    from mlflow.entities import Param

    existing = run.data.params
    new = []
    for raw_key, value in sorted(params.items()):
        key = sanitize_metric_name(raw_key)
        if len(key) > MAX_KEY_CHARS:
            log.warning("param %s is longer than MLflow's %d-character key limit; not logged", key[:80], MAX_KEY_CHARS)
            continue
        value = value[:MAX_PARAM_VALUE_CHARS]
        if key not in existing:
            new.append(Param(key, value))
        elif existing[key] != value:
            log.warning(
                "param %s of run %s changed (%r -> %r); MLflow params are immutable, keeping the "
                "first value (the run directory has the current one)",
                key, run.info.run_id, existing[key][:80], value[:80],
            )
    client.log_batch(run.info.run_id, params=new)


def _log_tags(client, run_id: str, tags: Mapping[str, str], secrets: Sequence[str]) -> None:
    from mlflow.entities import RunTag

    safe = [RunTag(sanitize_metric_name(k)[:MAX_KEY_CHARS], redact_text(v, secrets)[:MAX_TAG_VALUE_CHARS])
            for k, v in sorted(tags.items()) if not looks_like_credential(k)]
    client.log_batch(run_id, tags=safe)


def _log_metrics(client, run, metrics: Mapping[str, float]) -> None:
    """Log metrics whose value differs from the run's latest, so a rerun adds no duplicate points."""
    from mlflow.entities import Metric

    existing = run.data.metrics
    now_ms = int(time.time() * 1000)
    new = []
    for key, value in sorted(metrics.items()):
        name = sanitize_metric_name(key)
        if value is None or not math.isfinite(value) or existing.get(name) == value:
            continue
        new.append(Metric(name, float(value), now_ms, 0))
    client.log_batch(run.info.run_id, metrics=new)


def _mlflow_dataset(name: str, provenance: Mapping[str, Any]):
    """Build a metadata-only MLflow dataset whose digest and profile come from the provenance."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    provenance = {k: v for k, v in provenance.items() if v is not None}
    if provenance.get("kind") == "hub" and provenance.get("path"):
        source = HuggingFaceDatasetSource(
            path=str(provenance["path"]), config_name=provenance.get("name"),
            data_files=provenance.get("data_files"), split=provenance.get("split"),
            revision=provenance.get("revision"),
        )
    else:
        uri = str(provenance.get("path") or provenance.get("uri") or name)
        source = get_dataset_source_from_json(json.dumps({"uri": uri}), source_type="local")

    class ProvenanceDataset(MetaDataset):
        """A MetaDataset whose profile is the provenance (sha256, document range, limits)."""

        @property
        def profile(self) -> Any | None:
            return provenance

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(provenance, sort_keys=True, default=str)}

    return ProvenanceDataset(source, name=name, digest=stable_hash(provenance))


def _log_inputs(client, run_id: str, uses: Sequence[tuple[str, str, dict[str, Any]]],
                secrets: Sequence[str]) -> None:
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for context, name, provenance in uses:
        dataset = _mlflow_dataset(name, redact_structure(provenance, secrets))
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def _safe_copy(path: Path, staging: Path, secrets: Sequence[str]) -> Path:
    """Return ``path`` or a redacted copy of it in ``staging`` (same file name)."""
    if path.suffix not in TEXT_SUFFIXES:
        return path
    text = path.read_text(encoding="utf-8", errors="replace")
    redacted = text
    if path.suffix == ".json":
        with contextlib.suppress(ValueError):
            data = json.loads(text)
            clean = redact_structure(data, secrets)
            if clean != data:
                redacted = json.dumps(clean, indent=2) + "\n"
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        with contextlib.suppress(yaml.YAMLError):
            data = yaml.safe_load(text)
            clean = redact_structure(data, secrets)
            if clean != data:
                redacted = yaml.safe_dump(clean, sort_keys=False)
    redacted = redact_text(redacted, secrets)
    if redacted == text:
        return path
    staging.mkdir(parents=True, exist_ok=True)
    copy = staging / path.name
    copy.write_text(redacted, encoding="utf-8")
    return copy


def _log_files(client, run_id: str, files: Sequence[tuple[Path, str]], secrets: Sequence[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="qeval-artifacts-") as tmp:
        for i, (path, artifact_dir) in enumerate(files):
            if path.is_file():
                local = _safe_copy(path, Path(tmp) / str(i), secrets)
                client.log_artifact(run_id, str(local), artifact_dir or None)


def _remote_files(client, run_id: str, path: str) -> dict[str, int]:
    out = {}
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out.update(_remote_files(client, run_id, info.path))
        else:
            out[info.path] = info.file_size
    return out


def _log_checkpoint(client, run_id: str, checkpoint: Path) -> None:
    """Upload the checkpoint unless the run already has the same files with the same sizes."""
    if not checkpoint.is_dir():
        log.warning("log_checkpoint: %s does not exist; nothing uploaded", checkpoint)
        return
    local = {f"quantize/model/{p.relative_to(checkpoint).as_posix()}": p.stat().st_size
             for p in checkpoint.rglob("*") if p.is_file()}
    if _remote_files(client, run_id, "quantize/model") == local:
        return
    client.log_artifacts(run_id, str(checkpoint), "quantize/model")


def _scheme_artifacts(sdir: SchemeDir) -> list[tuple[Path, str]]:
    files = [(sdir.root / rel, artifact_dir) for rel, artifact_dir in SCHEME_ARTIFACT_FILES]
    for sub, pattern, artifact_dir in SCHEME_ARTIFACT_GLOBS:
        files += [(p, artifact_dir) for p in sorted((sdir.root / sub).glob(pattern))]
    files += [(p, "eval/samples") for p in sorted((sdir.eval_dir / "samples").glob("*")) if p.is_file()]
    return files


# --------------------------------------------------------------------------- the sweep


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
    write_json_atomic(model_dir(model) / "sweep.json", sweep)


def _mark_manifest(sdir: SchemeDir, run_id: str | None, synced: bool) -> None:
    manifest = Manifest(sdir)
    manifest.set("mlflow", {"run_id": run_id, "synced": synced})


def _track_scheme(client, ctx: dict[str, Any], scheme: str, baseline: Mapping[str, float]) -> str:
    model, sweep_id, parent_id = ctx["model"], ctx["sweep_id"], ctx["parent_run_id"]
    sdir = scheme_dir(model, scheme)
    manifest = Manifest(sdir)
    stored = (manifest.data.get("mlflow") or {}).get("run_id")
    identity = {"model": model, "scheme": scheme, "sweep_id": sweep_id, KIND_TAG: "scheme", PARENT_TAG: parent_id}
    run = _ensure_run(client, ctx["experiment_id"], stored, identity, run_name=scheme)
    run_id = run.info.run_id
    _mark_manifest(sdir, run_id, synced=False)
    ctx["result"]["child_run_ids"][scheme] = run_id

    secrets = ctx["secrets"]
    files = scheme_files(sdir)
    params = {**scheme_params(sdir, files), **ctx["env_params"]}
    _log_params(client, run, redact_params(params, secrets))
    _log_tags(client, run_id, scheme_tags(model, scheme, sweep_id, Manifest(sdir), files, ctx["signoff"]), secrets)
    metrics = scheme_metrics(sdir)
    if baseline:
        metrics.update(relative_metrics(metrics, baseline))
    _log_metrics(client, run, metrics)
    _log_inputs(client, run_id, dataset_uses(files), secrets)
    _log_files(client, run_id, _scheme_artifacts(sdir), secrets)
    if ctx["log_checkpoint"]:
        _log_checkpoint(client, run_id, sdir.checkpoint_dir)
    client.set_terminated(run_id, stage_status(manifest))
    _mark_manifest(sdir, run_id, synced=True)
    return run_id


def _track_parent_artifacts(client, ctx: dict[str, Any], schemes: Sequence[str]) -> None:
    model, parent_id, secrets = ctx["model"], ctx["parent_run_id"], ctx["secrets"]
    mdir = model_dir(model)
    rows = sweep_rows(model, schemes)
    from pipelines.signoff.plots import write_sweep_plots

    plots = write_sweep_plots(mdir, rows)
    files = [(mdir / "sweep.json", "")] + [(mdir / name, "signoff") for name in SIGNOFF_FILES]
    files += [(path, "plots") for path in plots.values()]
    with tempfile.TemporaryDirectory(prefix="qeval-compare-") as tmp:
        for fmt, suffix in (("markdown", "md"), ("csv", "csv")):
            table = Path(tmp) / f"compare.{suffix}"
            table.write_text(format_table(rows, fmt), encoding="utf-8")
            files.append((table, ""))
        _log_files(client, parent_id, files, secrets)


def _sweep_run_name(sweep_id: str) -> str:
    return sweep_id if sweep_id.startswith("sweep") else f"sweep-{sweep_id}"


def _upload_sweep(ctx: dict[str, Any], sweep: dict[str, Any], schemes: Sequence[str]) -> None:
    model, uri = ctx["model"], ctx["uri"]
    client = _client(uri)
    ctx["experiment_id"] = _ensure_experiment(client, ctx["experiment"], uri)
    state = sweep["mlflow"]
    identity = {"model": model, "sweep_id": ctx["sweep_id"], KIND_TAG: "sweep"}
    parent = _ensure_run(client, ctx["experiment_id"], state.get("parent_run_id"), identity,
                         run_name=_sweep_run_name(ctx["sweep_id"]))
    ctx["parent_run_id"] = state["parent_run_id"] = ctx["result"]["parent_run_id"] = parent.info.run_id
    _save_sweep(model, sweep)

    ctx["secrets"] = env_secrets()
    ctx["env_params"] = environment_params()
    ctx["signoff"] = read_json_if_readable(model_dir(model) / "signoff.json")
    sweep_params = flatten({k: sweep.get(k) for k in ("model", "suite", "schemes", "sweep_id")}, "sweep")
    _log_params(client, parent, redact_params({**sweep_params, **ctx["env_params"]}, ctx["secrets"]))
    parent_tags = {**identity, "signoff": signoff_verdict(ctx["signoff"])}
    _log_tags(client, parent.info.run_id, {k: v for k, v in parent_tags.items() if v is not None}, ctx["secrets"])

    baseline_dir = scheme_dir(model, BASELINE_SCHEME)
    baseline = scheme_metrics(baseline_dir) if baseline_dir.root.is_dir() else {}
    for scheme in schemes:
        if not scheme_dir(model, scheme).root.is_dir():
            log.warning("scheme %s has no run directory under %s; nothing to track", scheme, model_dir(model))
            continue
        _track_scheme(client, ctx, scheme, baseline)
    _track_parent_artifacts(client, ctx, schemes)
    client.set_terminated(parent.info.run_id, "FINISHED")


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
    name = experiment_name(model, experiment)
    state = sweep.setdefault("mlflow", {})
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
            stored = (Manifest(sdir).data.get("mlflow") or {}).get("run_id")
            _mark_manifest(sdir, stored, synced=False)
            if stored:
                result["child_run_ids"][scheme] = stored

    ctx = {"model": model, "uri": uri, "experiment": name, "sweep_id": str(sweep["sweep_id"]),
           "log_checkpoint": log_checkpoint, "result": result}
    try:
        with _fast_fail_http(uri):
            _upload_sweep(ctx, sweep, schemes)
    except Exception as exc:
        if not _is_unreachable(exc):
            raise
        log.warning(
            "MLflow tracking server %s is unreachable (%s). The sweep's results are complete in %s "
            "and marked unsynced; run `%s` to upload them when the server is back.",
            uri, _short(exc), model_dir(model), SYNC_COMMAND,
        )
        return result
    state["synced"] = True
    _save_sweep(model, sweep)
    result["synced"] = True
    return result


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


def _is_synced(model: str, sweep: Mapping[str, Any]) -> bool:
    state = sweep.get("mlflow") or {}
    if not state.get("synced") or not state.get("parent_run_id"):
        return False
    for scheme in sweep.get("schemes") or []:
        sdir = scheme_dir(model, scheme)
        if sdir.root.is_dir() and not (Manifest(sdir).data.get("mlflow") or {}).get("synced"):
            return False
    return True


def sync(model: str | None = None, *, log_checkpoint: bool | None = None) -> dict:
    """Upload every sweep not yet in MLflow (one model, or all under the runs root), without duplicates.

    Returns {model: track_sweep result}; a model already synced gets its stored
    ids with "uploaded": False.
    """
    root = runs_root()
    if model is not None:
        models = [model]
        if not (model_dir(model) / "sweep.json").is_file():
            raise QevalError(f"no sweep for model {model!r}: {model_dir(model) / 'sweep.json'} is missing. "
                             "Run the sweep first, or check QEVAL_RUNS_DIR.")
    else:
        models = sorted(p.name for p in root.iterdir() if (p / "sweep.json").is_file()) if root.is_dir() else []
    results: dict[str, Any] = {}
    for name in models:
        sweep = read_json(model_dir(name) / "sweep.json")
        state = sweep.get("mlflow") or {}
        if _is_synced(name, sweep):
            children = {s: (Manifest(scheme_dir(name, s)).data.get("mlflow") or {}).get("run_id")
                        for s in sweep.get("schemes") or [] if scheme_dir(name, s).root.is_dir()}
            results[name] = {"parent_run_id": state["parent_run_id"], "child_run_ids": children,
                             "synced": True, "uploaded": False, "experiment": state.get("experiment")}
            continue
        checkpoint = state.get("log_checkpoint", False) if log_checkpoint is None else log_checkpoint
        result = track_sweep(name, list(sweep.get("schemes") or []), experiment=state.get("experiment"),
                             log_checkpoint=bool(checkpoint))
        results[name] = {**result, "uploaded": result["synced"]}
    return results


# --------------------------------------------------------------------------- reading back


def _experiment_for_reading(model: str, experiment: str | None) -> str:
    if experiment or os.environ.get(EXPERIMENT_ENV, "").strip():
        return experiment_name(model, experiment)
    sweep = read_json_if_readable(model_dir(model) / "sweep.json") or {}
    return (sweep.get("mlflow") or {}).get("experiment") or experiment_name(model)


def compare(model: str, *, sweep_id: str | None = None, experiment: str | None = None) -> list[dict]:
    """Return scheme x metric rows of a sweep read back from MLflow, with deltas vs the baseline.

    Raises:
        QevalError: the experiment or the sweep is not in the tracking store.
    """
    import mlflow

    uri = tracking_uri()
    name = _experiment_for_reading(model, experiment)
    with _fast_fail_http(uri):
        mlflow.set_tracking_uri(uri)
        exp = _client(uri).get_experiment_by_name(name)
        if exp is None:
            raise QevalError(f"no MLflow experiment {name!r} at {uri}. Track the sweep first "
                             f"(or `{SYNC_COMMAND}`), or pass the experiment the sweep was logged to.")
        filter_string = f"tags.model = {_filter_value(model)}" if _filter_value(model) else ""
        runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=filter_string,
                                  output_format="pandas")
    rows = rows_from_runs(runs, model=model, sweep_id=sweep_id)
    if not rows:
        which = f"sweep {sweep_id!r}" if sweep_id else "any sweep"
        raise QevalError(f"experiment {name!r} at {uri} has no scheme runs of model {model!r} for {which}. "
                         f"Run the sweep or `{SYNC_COMMAND}` first.")
    return rows
