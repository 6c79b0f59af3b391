"""A small run tree with made-up numbers: baseline + two schemes.

Result files are written through their dataclasses in ``evals.results`` (the
classes the stages write with and every reader reads with), so a file here has
exactly the shape a real run writes; only the numbers are chosen by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from evals.results import (
    MemoryResult,
    PerplexityFile,
    PerplexityResult,
    QuantizeResult,
    ResultFile,
    SpeedResult,
    TasksResult,
)
from evals.speed import mean_decode_context_len

MODEL = "tiny-llama"
SWEEP_ID = "sweep-0001"
SCHEMES = ("baseline", "gptq-w4g128", "int8")
PROMPT_LEN, GEN_LEN = 128, 32  # the benchmark shape: metrics end in .p128.g32

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


def _write_result(cls: type[ResultFile], path: Path, **values: Any) -> None:
    """Write a result file through its dataclass, as the stages do (a field the class lacks, or one
    it needs and the fixture misses, fails here with its name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cls.from_dict(values, f"fixture {path.name}").write(path)


def _provenance(name: str) -> dict[str, Any]:
    return {"kind": "local", "path": f"data/{name}.jsonl", "sha256": hashlib.sha256(name.encode()).hexdigest()}


def _stats(median: float, p99: float | None = None) -> dict[str, float]:
    """A summary with the keys of evals.speed.summarize."""
    p99 = median * 1.5 if p99 is None else p99
    return {"n": 5, "median": median, "mean": median, "min": median * 0.9, "max": p99, "p10": median * 0.95,
            "p50": median, "p90": median * 1.2, "p99": p99}


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
        "model": {"name": model, "source": "models/tiny", "dtype": "float32"},
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
                       "source": {**_provenance("c4"), "documents": "[1000, 2000)"}, "token_ids_sha256": "cd" * 32}
    _write_result(
        QuantizeResult, root / "quantize" / "quantize.json",
        scheme=scheme, variant=numbers["variant"], quantizer=scheme, library=numbers["library"],
        library_version="1.0", backend=numbers["backend"], format="safetensors",
        params={"bits": 4, "group_size": 128}, ignore=["lm_head"], calibration=calibration, device="cpu",
        torch_threads=2, dtype="float32", duration_s=numbers["duration_s"],
        peak_rss_bytes=numbers["peak_rss_bytes"], cuda_peak_allocated_bytes=None,
        checkpoint=str(root / "quantize" / "model"), disk_bytes=numbers["disk_bytes"],
        baseline_disk_bytes=NUMBERS["baseline"]["disk_bytes"],
        compression_ratio=2 * 1024**3 / numbers["weights_bytes"], emulated=False, notes=[],
        worst_layers=[{"layer": "model.layers.0.mlp.down_proj", "rel_error": 0.05}],
    )
    (root / "quantize" / "layer_errors.csv").write_text(
        "layer,rel_error\nmodel.layers.0.mlp.down_proj,0.05\nmodel.layers.1.mlp.down_proj,0.03\n", encoding="utf-8")
    (root / "quantize" / "model").mkdir(parents=True, exist_ok=True)
    (root / "quantize" / "model" / "config.json").write_text('{"model_type": "llama"}\n', encoding="utf-8")

    ppl = {
        ds: PerplexityResult(
            dataset=ds, source=_provenance(ds) | ({"documents": "[0, 1000)"} if ds == "c4" else {}),
            protocol="gptq", seq_len=256, stride=256, n_windows=4, n_tokens=1024, token_ids_sha256="ab" * 32,
            ppl=value, word_ppl=value * 1.5, bits_per_byte=0.9, nll_sum=1024 * math.log(value), n_words=700,
            n_bytes=4000, dtype="float32", device="cpu", window_nll=[3.0, 3.1, 2.9, 3.0],
            window_tokens=[256, 256, 256, 256])
        for ds, value in numbers["ppl"].items()
    }
    PerplexityFile(ppl).write(root / "eval" / "perplexity.json")
    results = {}
    for task, (acc, acc_norm) in numbers["tasks"].items():
        results[task] = {"acc": acc, "acc_stderr": 0.02}
        if acc_norm is not None:
            results[task] |= {"acc_norm": acc_norm, "acc_norm_stderr": 0.02}
    _write_result(
        TasksResult, root / "eval" / "tasks.json",
        results=results, n_samples={t: 20 for t in results}, limit={t: 20 for t in results},
        lm_eval_version="0.4.13", tasks_dir="eval/tasks_rendered", lm_eval_tasks={t: f"qeval_{t}" for t in results},
        provenance={t: _provenance(t) for t in results}, samples={t: f"samples/{t}.jsonl" for t in results},
        settings={"batch_size": 8, "max_length": 2048}, duration_s=3.0, dtype="float32",
        lm_eval_commands=[f"lm_eval --model hf --tasks {','.join(results)} --limit 20"],
    )
    samples = root / "eval" / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for task in results:
        rows = [{"doc_id": i, "target": 0, "prediction": i % 2, "acc": int(i % 2 == 0), "loglikelihoods": [-1.0, -2.0]}
                for i in range(3)]
        (samples / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    speed_results = []
    for bs, (prefill, decode, ttft, ttft_p99, itl) in numbers["speed"].items():
        speed_results.append({
            "batch_size": bs, "prompt_len": PROMPT_LEN, "gen_len": GEN_LEN, "status": "ok", "error": None,
            "iterations": 5, "elapsed_s": 1.0, "mean_decode_context_len": mean_decode_context_len(PROMPT_LEN, GEN_LEN),
            "prefill_tok_s": _stats(prefill), "ttft_ms": _stats(ttft, ttft_p99),
            "decode_tok_s": _stats(decode), "itl_ms": _stats(itl),
        })
    speed_results.append({"batch_size": 16, "prompt_len": PROMPT_LEN, "gen_len": GEN_LEN, "status": "oom",
                          "error": "out of memory", "iterations": None, "elapsed_s": None,
                          "mean_decode_context_len": None, "prefill_tok_s": None, "ttft_ms": None,
                          "decode_tok_s": None, "itl_ms": None})
    _write_result(
        SpeedResult, root / "bench" / "speed.json",
        device_kind="cpu", device_name="Test CPU",
        what_ran={"layers": [{"module": "Linear", "storage": "dense_float", "dtype": "float32", "count": 7}],
                  "quantized_layers": 0, "dense_float_layers": 7, "activation_quantized_layers": 0,
                  "matmul_ops": ["aten::mm"], "low_precision_matmul_ops": []},
        settings={"warmup": 2, "iters": 5, "batch_sizes": [*numbers["speed"], 16], "prompt_lens": [PROMPT_LEN],
                  "gen_lens": [GEN_LEN]},
        results=speed_results,
        roofline={"bandwidth_gb_s": 20.0, "bytes_per_token": 1e9, "bound_tok_s": 20.0,
                  "decode_tok_s_bs1": numbers["speed"][1][1], "frac": numbers["roofline_frac"],
                  "context_len": mean_decode_context_len(PROMPT_LEN, GEN_LEN)},
        representative=True,
    )
    _write_result(
        MemoryResult, root / "bench" / "memory.json",
        disk_bytes=numbers["disk_bytes"], weights_bytes=numbers["weights_bytes"],
        weights_bytes_by_device={"cpu": numbers["weights_bytes"]}, peak_rss_bytes=numbers["peak_rss_bytes"],
        cuda_peak_allocated_bytes=None, cuda_peak_reserved_bytes=None, kv_bytes_per_token=4096,
        kv_dtype="float32", get_memory_footprint_bytes=numbers["weights_bytes"], representative=True,
    )
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
