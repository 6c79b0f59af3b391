"""GEMM/GEMV speed per dtype on this CPU, and the baseline's evaluate stage in float32 and bfloat16
(not a test; prints figures).

Run from the project root (after `make setup`):

    .venv/bin/python tests/benchmarks/compute_dtype.py [--threads 1] [--no-stage] [--suite quick]

1. The table: GFLOP/s of ``x @ w`` for the embedded model's shapes (prefill 512 x 576 x 1536,
   decode 1 x 576 x 1536, LM head 1 x 576 x 49152) in float32, bfloat16 and float16, at
   ``--threads`` threads (1 by default, as in the AVX2 table of docs/compute.md).
2. The whole stage: the baseline's quantize and evaluate stages of the suite (quick by default:
   WikiText-2 perplexity with the fidelity reference and noise floor, then the tasks), once with
   ``compute_dtype: float32`` and once with ``compute_dtype: bfloat16``, each through the real CLI
   in a fresh runs folder, with the evaluate stage's seconds read from its manifest.

To reach the AVX2 code paths on an AVX-512 machine, run it with ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`` (check that the printed capability then says AVX2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

SHAPES = {"prefill": [512, 576, 1536], "decode": [1, 576, 1536], "lm_head": [1, 576, 49152]}


def gemm_table(threads: int) -> str:
    import torch

    from pipelines import compute

    torch.set_num_threads(threads)
    features = compute.cpu_features()
    lines = [f"CPU {features.model}; torch {torch.__version__} kernels {features.capability}; native bf16 "
             f"{features.native_bf16}, fp16 {features.native_fp16}; {threads} thread(s); GFLOP/s", "",
             "| shape (m x k x n) | float32 | bfloat16 | float16 |", "|---|---|---|---|"]
    for name, shape in SHAPES.items():
        row = [compute.measure_gflops(shape, d, min_s=0.5) for d in compute.DTYPES]
        lines.append(f"| {' x '.join(map(str, shape))} ({name}) | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines)


def evaluate_seconds(dtype: str, suite: str) -> tuple[float, float]:
    """The baseline's quantize and evaluate stage seconds with ``compute_dtype: dtype``, run fresh."""
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / f"smollm2-{dtype}.yaml"
        model_file.write_text(
            f"name: smollm2-{dtype}\nsource: embedded:smollm2-135m\ndtype: bfloat16\ncompute_dtype: {dtype}\n"
            f"max_context: 2048\ndefault_suite: {suite}\ntarget_device: cpu\n"
            "scheme_overrides: {gptq: {group_size: 64}, gptq-w8: {group_size: 64}, awq: {group_size: 64}}\n")
        env = {**os.environ, "QEVAL_RUNS_DIR": str(Path(tmp) / "runs")}
        qeval = str(Path(sys.executable).parent / "qeval")
        for stage in ("quantize", "evaluate"):
            subprocess.run([qeval, stage, "--model", str(model_file), "--scheme", "baseline", "--quiet"],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        manifest = json.loads((Path(tmp) / "runs" / f"smollm2-{dtype}" / "baseline" / "manifest.json").read_text())
        return manifest["stages"]["quantize"]["duration_s"], manifest["stages"]["evaluate"]["duration_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for the GEMM/GEMV table")
    parser.add_argument("--no-stage", action="store_true", help="only the GEMM/GEMV table")
    parser.add_argument("--suite", default="quick", help="the suite whose baseline evaluate stage is timed")
    args = parser.parse_args()
    print(gemm_table(args.threads))
    if args.no_stage:
        return 0
    from pipelines.compute import thread_count

    print(f"\nbaseline stages of suite {args.suite!r}, {thread_count()} threads (QEVAL_THREADS to change):")
    print("| compute dtype | quantize s | evaluate s |\n|---|---|---|")
    for dtype in ("float32", "bfloat16"):
        start = time.perf_counter()
        quantize_s, evaluate_s = evaluate_seconds(dtype, args.suite)
        print(f"| {dtype} | {quantize_s:.1f} | {evaluate_s:.1f} |  (wall {time.perf_counter() - start:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
