"""A small hand-made run tree in the contract's format: baseline + two schemes, made-up numbers."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import yaml

MODEL = "tiny-llama"
SWEEP_ID = "sweep-0001"
SCHEMES = ("baseline", "gptq-w4g128", "int8")

# scheme -> the numbers the files hold (and so the metrics the tests expect).
NUMBERS: dict[str, dict[str, Any]] = {
    "baseline": {
        "variant": "bf16", "library": "transformers", "backend": "torch", "calibration": None,
        "ppl": {"wikitext2": 20.0, "c4": 30.0},
        "tasks": {"hellaswag": (0.40, 0.50), "arc_easy": (0.60, 0.55), "lambada": (0.50, None)},
        "weights_bytes": 2 * 1024**3, "disk_bytes": 2 * 1024**3 + 1024**2, "peak_rss_bytes": 3 * 1024**3,
        "speed": {1: (1000.0, 50.0, 20.0, 35.0, 20.0), 4: (3000.0, 150.0, 40.0, 70.0, 26.0)},
        "roofline_frac": 0.40, "duration_s": 1.0,
    },
    "gptq-w4g128": {
        "variant": "w4g128", "library": "gptqmodel", "backend": "torch", "calibration": "c4",
        "ppl": {"wikitext2": 21.0, "c4": 31.5},
        "tasks": {"hellaswag": (0.38, 0.48), "arc_easy": (0.57, 0.55), "lambada": (0.45, None)},
        "weights_bytes": 1024**3 // 2, "disk_bytes": 1024**3 // 2 + 1024**2, "peak_rss_bytes": 2 * 1024**3,
        "speed": {1: (900.0, 80.0, 22.0, 40.0, 12.5), 4: (2800.0, 240.0, 45.0, 80.0, 16.6)},
        "roofline_frac": 0.55, "duration_s": 120.0,
    },
    "int8": {
        "variant": "llm.int8", "library": "bitsandbytes", "backend": "bnb-cpu", "calibration": None,
        "ppl": {"wikitext2": 20.2, "c4": 30.1},
        "tasks": {"hellaswag": (0.40, 0.49), "arc_easy": (0.60, 0.56), "lambada": (0.49, None)},
        "weights_bytes": 1024**3, "disk_bytes": 1024**3 + 1024**2, "peak_rss_bytes": 2 * 1024**3,
        "speed": {1: (700.0, 30.0, 30.0, 50.0, 33.0), 4: (2000.0, 90.0, 60.0, 100.0, 44.0)},
        "roofline_frac": 0.20, "duration_s": 5.0,
    },
}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _provenance(name: str) -> dict[str, Any]:
    return {"kind": "local", "path": f"/data/{name}/{name}.jsonl", "sha256": hashlib.sha256(name.encode()).hexdigest()}


def write_scheme(runs_dir: Path, model: str, scheme: str, numbers: dict[str, Any],
                 recipe_extra: dict[str, Any] | None = None) -> Path:
    """Write one scheme's run directory and return it."""
    root = runs_dir / model / scheme
    now = time.time()
    stages = {
        stage: {"status": "done", "key": f"{stage}-key", "started_at": now - 10, "finished_at": now,
                "duration_s": 10.0, "outputs": []}
        for stage in ("quantize", "evaluate", "benchmark")
    }
    _write_json(root / "manifest.json", {"model": model, "scheme": scheme, "variant": numbers["variant"], "stages": stages})
    recipe = {
        "model": {"name": model, "source": "/models/tiny", "dtype": "float32"},
        "scheme": {"name": scheme, "bits": 16 if scheme == "baseline" else 4, "group_size": 128},
        "suite": {"name": "smoke", "perplexity": {"datasets": ["wikitext2", "c4"], "seq_len": 256},
                  "tasks": {"names": list(numbers["tasks"]), "limit": 20}},
    }
    for section, values in (recipe_extra or {}).items():
        recipe.setdefault(section, {}).update(values)
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")

    calibration = None
    if numbers["calibration"]:
        calibration = {"dataset": numbers["calibration"], "n_samples": 16, "seq_len": 256, "seed": 0,
                       "source": {**_provenance("c4"), "documents": "[1000, 2000)"}}
    _write_json(root / "quantize" / "quantize.json", {
        "scheme": scheme, "variant": numbers["variant"], "library": numbers["library"],
        "library_version": "1.0", "backend": numbers["backend"], "params": {"bits": 4, "group_size": 128},
        "calibration": calibration, "device": "cpu", "duration_s": numbers["duration_s"],
        "peak_rss_bytes": numbers["peak_rss_bytes"], "disk_bytes": numbers["disk_bytes"],
        "compression_ratio": 2 * 1024**3 / numbers["weights_bytes"], "emulated": False,
        "worst_layers": [{"layer": "model.layers.0.mlp.down_proj", "rel_error": 0.05}],
    })
    (root / "quantize" / "layer_errors.csv").write_text(
        "layer,rel_error\nmodel.layers.0.mlp.down_proj,0.05\nmodel.layers.1.mlp.down_proj,0.03\n", encoding="utf-8")
    (root / "quantize" / "model").mkdir(parents=True, exist_ok=True)
    (root / "quantize" / "model" / "config.json").write_text('{"model_type": "llama"}\n', encoding="utf-8")

    ppl = {
        ds: {"dataset": ds, "source": _provenance(ds) | ({"documents": "[0, 1000)"} if ds == "c4" else {}),
             "protocol": "gptq", "seq_len": 256, "stride": 256, "n_windows": 4, "n_tokens": 1024,
             "token_ids_sha256": "ab" * 32, "ppl": value, "word_ppl": value * 1.5, "bits_per_byte": 0.9,
             "window_nll": [3.0, 3.1, 2.9, 3.0], "dtype": "float32", "device": "cpu"}
        for ds, value in numbers["ppl"].items()
    }
    _write_json(root / "eval" / "perplexity.json", ppl)
    results = {}
    for task, (acc, acc_norm) in numbers["tasks"].items():
        results[task] = {"acc": acc, "acc_stderr": 0.02}
        if acc_norm is not None:
            results[task] |= {"acc_norm": acc_norm, "acc_norm_stderr": 0.02}
    _write_json(root / "eval" / "tasks.json", {
        "results": results, "n_samples": {t: 20 for t in results}, "limit": {t: 20 for t in results},
        "lm_eval_version": "0.4.13", "tasks_dir": "/work/main/evals/tasks",
    })
    samples = root / "eval" / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for task in results:
        rows = [{"doc_id": i, "target": 0, "prediction": i % 2, "acc": int(i % 2 == 0), "loglikelihoods": [-1.0, -2.0]}
                for i in range(3)]
        (samples / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    speed_results = []
    for bs, (prefill, decode, ttft, ttft_p99, itl) in numbers["speed"].items():
        speed_results.append({
            "batch_size": bs, "prompt_len": 128, "gen_len": 32, "status": "ok", "error": None,
            "prefill_tok_s": {"median": prefill, "min": prefill * 0.9, "max": prefill * 1.1, "p10": prefill * 0.95, "p90": prefill * 1.05},
            "ttft_ms": {"median": ttft, "p50": ttft, "p90": ttft * 1.2, "p99": ttft_p99},
            "decode_tok_s": {"median": decode, "min": decode * 0.9, "max": decode * 1.1, "p10": decode * 0.95, "p90": decode * 1.05},
            "itl_ms": {"p50": itl, "p90": itl * 1.2, "p99": itl * 1.5},
        })
    speed_results.append({"batch_size": 16, "prompt_len": 128, "gen_len": 32, "status": "oom", "error": "out of memory"})
    _write_json(root / "bench" / "speed.json", {
        "device": "cpu", "kernel": numbers["backend"], "settings": {"warmup": 2, "iterations": 5},
        "results": speed_results,
        "roofline": {"bandwidth_gb_s": 20.0, "bytes_per_token": 1e9, "bound_tok_s": 20.0,
                     "decode_tok_s_bs1": numbers["speed"][1][1], "frac": numbers["roofline_frac"]},
    })
    _write_json(root / "bench" / "memory.json", {
        "disk_bytes": numbers["disk_bytes"], "weights_bytes": numbers["weights_bytes"],
        "peak_rss_bytes": numbers["peak_rss_bytes"], "cuda_peak_allocated_bytes": None,
        "cuda_peak_reserved_bytes": None, "kv_bytes_per_token": 4096,
        "get_memory_footprint_bytes": numbers["weights_bytes"],
    })
    return root


def write_run_tree(runs_dir: Path, model: str = MODEL, schemes: tuple[str, ...] = SCHEMES,
                   sweep_id: str = SWEEP_ID, recipe_extra: dict[str, Any] | None = None,
                   signoff: bool = True) -> Path:
    """Write runs/<model>/{sweep.json, signoff.*, <scheme>/...} and return the model directory."""
    model_root = runs_dir / model
    for scheme in schemes:
        write_scheme(runs_dir, model, scheme, NUMBERS[scheme], recipe_extra)
    now = time.time()
    _write_json(model_root / "sweep.json", {
        "sweep_id": sweep_id, "model": model, "suite": "smoke", "schemes": list(schemes),
        "started_at": now - 100, "finished_at": now,
    })
    if signoff:
        # the shape pipelines.signoff.gates.signoff writes
        verdicts = {s: "PASS" if s != "gptq-w4g128" else "FAIL" for s in schemes if s != "baseline"}
        _write_json(model_root / "signoff.json", {
            "overall": "FAIL", "exit_code": 1, "verdicts": {"baseline": "BASELINE", **verdicts},
            "schemes": [{"scheme": s, "verdict": v, "gates": []} for s, v in verdicts.items()],
        })
        (model_root / "signoff.md").write_text("# Sign-off\n\nint8: pass\n", encoding="utf-8")
    return model_root


def migrated_sqlite_db(directory: Path) -> Path:
    """Create an empty MLflow SQLite store (schema migrations take seconds; tests copy it)."""
    from mlflow import MlflowClient

    db = directory / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def sqlite_store(template_db: Path, directory: Path) -> str:
    """Copy the migrated template store into ``directory`` and return its tracking URI."""
    import shutil

    db = directory / "mlflow.db"
    shutil.copyfile(template_db, db)
    return f"sqlite:///{db}"
