"""What a scheme's MLflow run records, read from its run directory: params, tags, dataset uses.

Result files are read through their dataclasses (``evals.results``), never as
raw dicts, so a renamed or missing field fails here with the file's name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evals.results import PerplexityFile, QuantizeResult, SpeedResult, TasksResult
from pipelines import environment
from pipelines.rundir import Manifest, SchemeDir

log = logging.getLogger(__name__)

# Tells a sweep's parent run ("sweep") from its scheme runs ("scheme"); compare reads it back.
KIND_TAG = "qeval.kind"

# Fields of quantize.json that are not params: logged separately (params, calibration), logged as
# metrics (duration, sizes, peaks), or paths and lists that belong in the artifact.
QUANT_NOT_PARAMS = frozenset({
    "params", "calibration", "duration_s", "peak_rss_bytes", "cuda_peak_allocated_bytes", "checkpoint",
    "disk_bytes", "baseline_disk_bytes", "compression_ratio", "notes", "worst_layers", "compute",
})
# Fields of speed.json that are not params: the settings (logged under bench.settings) and the measurements.
BENCH_NOT_PARAMS = frozenset({"settings", "results", "roofline"})
PPL_PROTOCOL_FIELDS = ("protocol", "seq_len", "stride", "n_windows", "n_tokens", "token_ids_sha256",
                       "dtype", "device", "source")


@dataclasses.dataclass(frozen=True)
class SchemeFiles:
    """The result files of one scheme's run directory (None: the stage has not written it)."""

    quantize: QuantizeResult | None
    perplexity: PerplexityFile | None
    tasks: TasksResult | None
    speed: SpeedResult | None


def scheme_files(sdir: SchemeDir) -> SchemeFiles:
    return SchemeFiles(
        quantize=QuantizeResult.read_if_present(sdir.quantize_json),
        perplexity=PerplexityFile.read_if_present(sdir.eval_dir / PerplexityFile.FILE),
        tasks=TasksResult.read_if_present(sdir.eval_dir / TasksResult.FILE),
        speed=SpeedResult.read_if_present(sdir.bench_dir / SpeedResult.FILE),
    )


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


def scheme_params(sdir: SchemeDir, files: SchemeFiles) -> dict[str, str]:
    """Collect the resolved recipe and the calibration, evaluation and benchmark protocols."""
    params = flatten(_read_recipe(sdir.recipe_path), "recipe")
    if (quantize := files.quantize) is not None:
        described = {k: v for k, v in quantize.to_dict().items() if k not in QUANT_NOT_PARAMS}
        params.update(flatten(described, "quant"))
        params.update(flatten(quantize.params, "quant.params"))
        params.update(flatten(quantize.calibration or {}, "calibration"))
        # The compute dtype, its reason, the CPU capability and threads: a bf16 and an fp32 run
        # are told apart in MLflow's compare view (compute.dtype).
        params.update(flatten(quantize.compute or {}, "compute"))
    if files.perplexity is not None:
        for dataset, result in files.perplexity.datasets.items():
            protocol = {k: getattr(result, k) for k in PPL_PROTOCOL_FIELDS}
            params.update(flatten(protocol, f"eval.ppl.{dataset}"))
    if (tasks := files.tasks) is not None:
        for task, limit in tasks.limit.items():
            params[f"eval.tasks.{task}.limit"] = _param_value(limit)
        for task, n in tasks.n_samples.items():
            params[f"eval.tasks.{task}.n_samples"] = _param_value(n)
        params["eval.tasks.lm_eval_version"] = tasks.lm_eval_version
        params["eval.tasks.dtype"] = tasks.dtype  # in bf16, answers can flip with the batch size
        params.update(flatten(tasks.settings, "eval.tasks.settings"))
    if (speed := files.speed) is not None:
        described = {k: v for k, v in speed.to_dict().items() if k not in BENCH_NOT_PARAMS}
        params.update(flatten(described, "bench"))
        params.update(flatten(speed.settings, "bench.settings"))
    return params


def signoff_verdict(signoff: Mapping[str, Any] | None, scheme: str | None = None) -> str | None:
    """The sweep's overall verdict, or one scheme's, from signoff.json."""
    if not isinstance(signoff, Mapping):
        return None
    verdict = signoff.get("overall") if scheme is None else (signoff.get("verdicts") or {}).get(scheme)
    return str(verdict) if verdict is not None else None


def scheme_tags(model: str, scheme: str, sweep_id: str, manifest: Manifest, files: SchemeFiles,
                signoff: Mapping[str, Any] | None) -> dict[str, str]:
    quantize = files.quantize
    tags = {
        "model": model,
        "scheme": scheme,
        "sweep_id": sweep_id,
        KIND_TAG: "scheme",
        "variant": manifest.data.get("variant") or (quantize.variant if quantize else None),
        "backend": quantize.backend if quantize else None,
        "device": quantize.device if quantize else None,
        "signoff": signoff_verdict(signoff, scheme),
    }
    for stage, entry in manifest.data.get("stages", {}).items():
        tags[f"stage.{stage}"] = entry.get("status")
    return {k: str(v) for k, v in tags.items() if v is not None}


def dataset_uses(files: SchemeFiles) -> list[tuple[str, str, dict[str, Any]]]:
    """Return (context, dataset name, provenance) for calibration and evaluation data."""
    uses = []
    calibration = files.quantize.calibration if files.quantize is not None else None
    if calibration:
        # quantizers.calibration.CalibrationSet.to_dict: dataset, source, n_samples, seq_len, seed.
        drawn = {k: calibration[k] for k in ("n_samples", "seq_len", "seed")}
        uses.append(("calibration", str(calibration["dataset"]), {**calibration["source"], **drawn}))
    if files.perplexity is not None:
        for dataset, result in files.perplexity.datasets.items():
            uses.append(("evaluation", str(dataset), dict(result.source)))
    if (tasks := files.tasks) is not None:
        for task in tasks.results:
            # Every task qeval defines has provenance; lm-eval's own may not.
            source = tasks.provenance.get(task) or {"kind": "lm-eval-task", "task": task}
            uses.append(("evaluation", str(task), {**source, "limit": tasks.limit.get(task)}))
    return uses


def stage_status(manifest: Manifest) -> str:
    statuses = {entry.get("status") for entry in manifest.data.get("stages", {}).values()}
    return "FAILED" if "failed" in statuses else "FINISHED"
