"""Writing one MLflow run: find or create it, then log params, tags, metrics, inputs and artifacts.

Every function is idempotent against the run's current state, so logging the
same run directory twice adds nothing: params already there are kept (MLflow
params are immutable), a metric is logged only when its value changed, and a
checkpoint is uploaded only when its files differ.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.rundir import stable_hash
from pipelines.signoff.metrics import sanitize_metric_name
from pipelines.tracking.redaction import looks_like_credential, redact_structure, redact_text
from pipelines.tracking.store import artifact_location, filter_value, is_unreachable

log = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation: MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH,
# MAX_ENTITY_KEY_LENGTH).
MAX_PARAM_VALUE_CHARS = 6000
MAX_TAG_VALUE_CHARS = 8000
MAX_KEY_CHARS = 250
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".csv", ".md", ".html", ".txt"}


def ensure_experiment(client, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri))
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
        if is_unreachable(exc) or exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return None if run.info.lifecycle_stage == "deleted" else run


def ensure_run(client, experiment_id: str, stored_run_id: str | None, identity: Mapping[str, str],
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
        quoted = filter_value(value)
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


def log_params(client, run, params: Mapping[str, str]) -> None:
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


def log_tags(client, run_id: str, tags: Mapping[str, str], secrets: Sequence[str]) -> None:
    from mlflow.entities import RunTag

    safe = [RunTag(sanitize_metric_name(k)[:MAX_KEY_CHARS], redact_text(v, secrets)[:MAX_TAG_VALUE_CHARS])
            for k, v in sorted(tags.items()) if not looks_like_credential(k)]
    client.log_batch(run_id, tags=safe)


def log_metrics(client, run, metrics: Mapping[str, float]) -> None:
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


def log_inputs(client, run_id: str, uses: Sequence[tuple[str, str, dict[str, Any]]],
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


def log_files(client, run_id: str, files: Sequence[tuple[Path, str]], secrets: Sequence[str]) -> None:
    """Upload each (file, artifact dir) that exists, text files redacted first."""
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


def log_checkpoint(client, run_id: str, checkpoint: Path) -> None:
    """Upload the checkpoint unless the run already has the same files with the same sizes."""
    if not checkpoint.is_dir():
        log.warning("log_checkpoint: %s does not exist; nothing uploaded", checkpoint)
        return
    local = {f"quantize/model/{p.relative_to(checkpoint).as_posix()}": p.stat().st_size
             for p in checkpoint.rglob("*") if p.is_file()}
    if _remote_files(client, run_id, "quantize/model") == local:
        return
    client.log_artifacts(run_id, str(checkpoint), "quantize/model")
