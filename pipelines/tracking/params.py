"""What a scheme's MLflow run records, read from its run directory: params, tags, dataset uses."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines import environment
from pipelines.rundir import Manifest, SchemeDir, read_json_if_readable

log = logging.getLogger(__name__)

# Tells a sweep's parent run ("sweep") from its scheme runs ("scheme"); compare_table reads it back.
KIND_TAG = "qeval.kind"


def _read_recipe(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _param_value(value: Any) -> str:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return str(value)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts into ``{"a.b.c": "value"}``; lists become compact JSON, None is dropped."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif value is not None:
            out[name] = _param_value(value)
    return out


def environment_params() -> dict[str, str]:
    params = {f"lib.{dist}": version for dist, version in environment.library_versions().items()}
    params["git_commit"] = environment.git_commit()
    params.update(flatten(environment.hardware(), "hw"))
    return params


def scheme_params(sdir: SchemeDir, files: Mapping[str, Any]) -> dict[str, str]:
    """Collect the resolved recipe and the calibration, evaluation and benchmark protocols."""
    params = flatten(_read_recipe(sdir.recipe_path), "recipe")
    quantize = files["quantize"] or {}
    quant_keys = ("scheme", "variant", "quantizer", "library", "library_version", "backend", "format",
                  "kernel", "kernels", "ignore", "device", "dtype", "emulated")
    params.update(flatten({k: quantize[k] for k in quant_keys if k in quantize}, "quant"))
    params.update(flatten(quantize.get("params") or {}, "quant.params"))
    params.update(flatten(quantize.get("calibration") or {}, "calibration"))
    protocol_keys = ("protocol", "seq_len", "stride", "n_windows", "n_tokens", "token_ids_sha256",
                     "dtype", "device", "source")
    for dataset, entry in (files["perplexity"] or {}).items():
        if isinstance(entry, Mapping):
            params.update(flatten({k: entry[k] for k in protocol_keys if k in entry}, f"eval.ppl.{dataset}"))
    tasks = files["tasks"] or {}
    for task, limit in (tasks.get("limit") or {}).items():
        params[f"eval.tasks.{task}.limit"] = _param_value(limit)
    for task, n in (tasks.get("n_samples") or {}).items():
        params[f"eval.tasks.{task}.n_samples"] = _param_value(n)
    if tasks.get("lm_eval_version"):
        params["eval.tasks.lm_eval_version"] = str(tasks["lm_eval_version"])
    speed = files["speed"] or {}
    params.update(flatten({k: speed[k] for k in ("device", "kernel") if k in speed}, "bench"))
    params.update(flatten(speed.get("settings") or {}, "bench.settings"))
    return params


def scheme_files(sdir: SchemeDir) -> dict[str, Any]:
    return {
        "quantize": read_json_if_readable(sdir.quantize_json),
        "perplexity": read_json_if_readable(sdir.eval_dir / "perplexity.json"),
        "tasks": read_json_if_readable(sdir.eval_dir / "tasks.json"),
        "speed": read_json_if_readable(sdir.bench_dir / "speed.json"),
    }


def signoff_verdict(signoff: Mapping[str, Any] | None, scheme: str | None = None) -> str | None:
    """The sweep's overall verdict, or one scheme's, from signoff.json."""
    if not isinstance(signoff, Mapping):
        return None
    verdict = signoff.get("overall") if scheme is None else (signoff.get("verdicts") or {}).get(scheme)
    return str(verdict) if verdict is not None else None


def scheme_tags(model: str, scheme: str, sweep_id: str, manifest: Manifest, files: Mapping[str, Any],
                 signoff: Mapping[str, Any] | None) -> dict[str, str]:
    quantize = files["quantize"] or {}
    speed = files["speed"] or {}
    tags = {
        "model": model,
        "scheme": scheme,
        "sweep_id": sweep_id,
        KIND_TAG: "scheme",
        "variant": manifest.data.get("variant") or quantize.get("variant"),
        "backend": quantize.get("backend") or quantize.get("kernel") or speed.get("kernel"),
        "device": quantize.get("device") or speed.get("device"),
        "signoff": signoff_verdict(signoff, scheme),
    }
    for stage, entry in manifest.data.get("stages", {}).items():
        tags[f"stage.{stage}"] = entry.get("status")
    return {k: str(v) for k, v in tags.items() if v is not None}


def dataset_uses(files: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Return (context, dataset name, provenance) for calibration and evaluation data."""
    uses = []
    calibration = (files["quantize"] or {}).get("calibration")
    if isinstance(calibration, Mapping):
        name = calibration.get("dataset") or calibration.get("name") or "calibration"
        # The provenance is nested under "source" (as in perplexity.json) or flat in the dict.
        source = calibration.get("source") or calibration.get("provenance") or calibration
        drawn = {k: calibration.get(k) for k in ("n_samples", "seq_len", "seed")}
        uses.append(("calibration", str(name), {**source, **drawn}))
    for dataset, entry in (files["perplexity"] or {}).items():
        if isinstance(entry, Mapping):
            uses.append(("evaluation", str(dataset), dict(entry.get("source") or {})))
    tasks = files["tasks"] or {}
    sources = tasks.get("sources") or {}
    for task in tasks.get("results") or {}:
        source = sources.get(task) or {"kind": "lm-eval-task", "path": tasks.get("tasks_dir"), "task": task}
        uses.append(("evaluation", str(task), {**source, "limit": (tasks.get("limit") or {}).get(task)}))
    return uses


def stage_status(manifest: Manifest) -> str:
    statuses = {entry.get("status") for entry in manifest.data.get("stages", {}).values()}
    return "FAILED" if "failed" in statuses else "FINISHED"
