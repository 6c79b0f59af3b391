"""Benchmark stage: memory, speed, roofline (and a profile on request) of the reloaded checkpoint.

The local executor runs this stage in a fresh process per scheme, so one
scheme's allocations and caches never leak into another's numbers.
Writes ``bench/memory.json``, ``bench/speed.json`` and, with --profile,
``bench/profile.json`` and ``bench/trace.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines.environment import hardware, library_versions
from pipelines.quantizers import get_quantizer, loading
from pipelines.rundir import Manifest, read_json, runs_root, stable_hash, write_json_atomic
from pipelines.stages.common import StageContext, run_stage

log = logging.getLogger(__name__)


def benchmark_key(ctx: StageContext) -> str:
    return stable_hash({
        "quantize": Manifest(ctx.sdir).stage("quantize").get("key"),
        "benchmark": ctx.recipe.benchmark.model_dump(),
        "profile": ctx.profile,
        "device": ctx.device,
        "hardware": {k: v for k, v in hardware().items() if k != "platform"},
        "versions": library_versions(),
    })


def run(ctx: StageContext) -> str:
    return run_stage(ctx, "benchmark", benchmark_key(ctx), lambda: _benchmark(ctx))


def _benchmark(ctx: StageContext) -> tuple[list[Path], dict]:
    import torch

    from evals.memory import input_embedding_bytes_unread, measure_memory, reset_peak_memory
    from evals.roofline import cached_bandwidth, roofline
    from evals.speed import measure_speed

    recipe, device, bench = ctx.recipe, ctx.device, ctx.recipe.benchmark
    quantizer = get_quantizer(recipe.scheme.quantizer)
    qinfo = read_json(ctx.sdir.quantize_json)
    reset_peak_memory(device)
    loading.count_load("benchmark")
    model = quantizer.load(ctx.checkpoint(), device, recipe.model.dtype, recipe.model.n_gpus)
    checkpoint = Path(ctx.checkpoint())
    tokenizer = loading.load_tokenizer(ctx.base_source, recipe.model.revision)

    speed = measure_speed(
        model, tokenizer, batch_sizes=tuple(bench.batch_sizes), prompt_lens=tuple(bench.prompt_lens),
        gen_lens=tuple(bench.gen_lens), warmup=bench.warmup, iters=bench.iters, min_time_s=bench.min_time_s,
        device=device, show_progress=ctx.show_progress,
    )
    memory = measure_memory(model, checkpoint if checkpoint.is_dir() else None, getattr(torch, recipe.model.dtype))
    bandwidth = cached_bandwidth(device, runs_root() / ".cache" / "bandwidth.json")
    bs1 = [r for r in speed.get("results", []) if r.get("batch_size") == 1 and r.get("status") == "ok"]
    if bs1:
        r = bs1[0]
        context_len = r["prompt_len"] + r["gen_len"] / 2  # mean KV length during decode
        speed["roofline"] = roofline(
            r["decode_tok_s"]["median"], memory["weights_bytes"], memory["kv_bytes_per_token"], context_len,
            bandwidth["bandwidth_bytes_s"], unread_weight_bytes=input_embedding_bytes_unread(model),
        )
    # Emulated runs (a compressed checkpoint decompressed to dense on load) and
    # costs measured off the target device are kept but flagged.
    speed["representative"] = not qinfo.get("emulated", False)
    memory["representative"] = speed["representative"]
    outputs = [ctx.sdir.bench_dir / "speed.json", ctx.sdir.bench_dir / "memory.json"]
    write_json_atomic(outputs[0], speed)
    write_json_atomic(outputs[1], memory)
    if ctx.profile or bench.profile:
        from evals.profiling import profile_model

        profile_model(model, out_dir=ctx.sdir.bench_dir, device=device)
        outputs.append(ctx.sdir.bench_dir / "profile.json")
    return outputs, {}
