"""``qeval sync``: upload every sweep whose runs are not all in MLflow yet, without duplicates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.errors import QevalError
from pipelines.rundir import Manifest, model_dir, read_json, runs_root, scheme_dir
from pipelines.tracking.sweep import stored_run_id, track_sweep


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
            children = {s: stored_run_id(scheme_dir(name, s))
                        for s in sweep.get("schemes") or [] if scheme_dir(name, s).root.is_dir()}
            results[name] = {"parent_run_id": state["parent_run_id"], "child_run_ids": children,
                             "synced": True, "uploaded": False, "experiment": state.get("experiment")}
            continue
        checkpoint = state.get("log_checkpoint", False) if log_checkpoint is None else log_checkpoint
        result = track_sweep(name, list(sweep.get("schemes") or []), experiment=state.get("experiment"),
                             log_checkpoint=bool(checkpoint))
        results[name] = {**result, "uploaded": result["synced"]}
    return results
