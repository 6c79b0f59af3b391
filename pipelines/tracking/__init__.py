"""MLflow tracking of a sweep: one parent run per sweep, one nested child run per scheme.

This package is the only code that imports mlflow, and it does so inside
functions (the import costs about 1.5 s). The run directories stay the source
of truth; MLflow is a copy that ``track_sweep`` and ``sync`` keep up to date.

Modules:
    store      where the store is (``tracking_uri``), reaching it, telling an outage from an error
    runs       one MLflow run: find or create it, log params, tags, metrics, inputs, artifacts
    sweep      ``track_sweep``: a sweep's parent run and its scheme runs
    sync       ``sync``: upload the sweeps not yet in MLflow
    compare    ``compare``: rows of a sweep from MLflow or the run directories; ``format_table``
    params     params, tags and dataset uses read from a run directory (no mlflow)
    redaction  secrets kept out of params, tags and artifacts (no mlflow)

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

from pipelines.tracking.compare import compare, format_table, rows_from_run_dirs, rows_from_runs
from pipelines.tracking.redaction import REDACTED, looks_like_credential
from pipelines.tracking.store import experiment_name, tracking_uri
from pipelines.tracking.sweep import track_sweep
from pipelines.tracking.sync import sync

__all__ = [
    "REDACTED",
    "compare",
    "experiment_name",
    "format_table",
    "looks_like_credential",
    "rows_from_run_dirs",
    "rows_from_runs",
    "sync",
    "track_sweep",
    "tracking_uri",
]
