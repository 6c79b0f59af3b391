"""Benchmark stage: memory, speed, roofline (and a profile on request) of the reloaded checkpoint.

The local executor runs this stage in a fresh process per scheme, so one
scheme's allocations and caches never leak into another's numbers.
Writes ``bench/memory.json`` and ``bench/speed.json`` (through their ``evals.results``
classes; speed.json records what ran, which decides ``representative``) and, with --profile,
``bench/profile.json`` and ``bench/trace.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines.quantizers import get_quantizer, loading
from pipelines.rundir import runs_root
from pipelines.stages.common import StageContext, run_stage
from pipelines.stages.keys import benchmark_key

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> str:
    return run_stage(ctx, "benchmark", benchmark_key(ctx), lambda: _benchmark(ctx))


def _benchmark(ctx: StageContext) -> tuple[list[Path], dict]:
    import torch

    from evals.kernels import judge_representative, what_ran
    from evals.memory import input_embedding_bytes_unread, measure_memory, reset_peak_memory
    from evals.results import MemoryResult, SpeedResult
    from evals.roofline import cached_bandwidth, roofline
    from evals.speed import mean_decode_context_len, measure_speed

    recipe, device, bench = ctx.recipe, ctx.device, ctx.recipe.benchmark
    quantizer = get_quantizer(recipe.scheme.quantizer)
    if quantizer.engine != "transformers":  # llama.cpp measures its own GGUF (llama-bench)
        from pipelines.stages.engine import benchmark_engine

        return benchmark_engine(ctx, quantizer)
    reset_peak_memory(device)
    loading.count_load("benchmark")
    model = quantizer.load(ctx.checkpoint(), device, ctx.compute_dtype, recipe.model.n_gpus,
                           trust_remote_code=recipe.model.trust_remote_code)
    checkpoint = Path(ctx.checkpoint())
    tokenizer = loading.load_tokenizer(ctx.base_source, recipe.model.revision,
                                     trust_remote_code=recipe.model.trust_remote_code)

    speed = measure_speed(
        model, tokenizer, batch_sizes=tuple(bench.batch_sizes), prompt_lens=tuple(bench.prompt_lens),
        gen_lens=tuple(bench.gen_lens), warmup=bench.warmup, iters=bench.iters, min_time_s=bench.min_time_s,
        device=device, show_progress=ctx.show_progress,
    )
    # What ran, from the model after its forwards: it decides whether the costs are representative.
    ran = what_ran(model, device)
    representative, reason = judge_representative(ran, expects_quantized=not quantizer.is_reference)
    if reason:
        log.warning("%s/%s: costs not representative: %s", ctx.model, ctx.scheme, reason)
    memory = measure_memory(model, checkpoint if checkpoint.is_dir() else None, getattr(torch, ctx.compute_dtype))
    bandwidth = cached_bandwidth(device, runs_root() / ".cache" / "bandwidth.json")
    bs1 = [r for r in speed["results"] if r["batch_size"] == 1 and r["status"] == "ok"]
    roof = None
    if bs1:
        r = bs1[0]
        roof = roofline(
            r["decode_tok_s"]["median"], memory["weights_bytes"], memory["kv_bytes_per_token"],
            mean_decode_context_len(r["prompt_len"], r["gen_len"]), bandwidth["bandwidth_bytes_s"],
            unread_weight_bytes=input_embedding_bytes_unread(model),
        )
    outputs = [
        SpeedResult(**speed, what_ran=ran, roofline=roof, representative=representative,
                    representative_reason=reason).write(ctx.sdir.bench_dir / SpeedResult.FILE),
        MemoryResult(**memory, representative=representative).write(ctx.sdir.bench_dir / MemoryResult.FILE),
    ]
    if ctx.profile or bench.profile:
        from evals.profiling import profile_model

        profile_model(model, out_dir=ctx.sdir.bench_dir, device=device)
        outputs.append(ctx.sdir.bench_dir / "profile.json")
    return outputs, {}
