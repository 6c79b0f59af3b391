"""Opening a checkpoint written for an engine other than transformers (llama.cpp's GGUF).

The stages call these where they would call ``quantizer.load``, chosen by the quantizer's
``engine`` attribute, never by the scheme's name.
"""

from __future__ import annotations

from typing import Any

from pipelines.quantizers.base import Quantizer
from pipelines.stages.common import StageContext

# llama.cpp's context when the model recipe sets no max_context (qeval's default window cap).
DEFAULT_N_CTX = 2048


def gguf_file(ctx: StageContext):
    from pipelines.quantizers.gguf import gguf_path

    return gguf_path(ctx.checkpoint())


def open_for_eval(ctx: StageContext, quantizer: Quantizer) -> Any:
    """A scorer with ``logits``, ``config`` and ``lm_eval_model`` in place of a loaded model."""
    if quantizer.engine != "llama.cpp":
        raise ValueError(f"no evaluation path for engine {quantizer.engine!r}")
    from evals.llamacpp_eval import open_gguf

    params = quantizer.parse_params(ctx.recipe.scheme.params, f"scheme {ctx.scheme} params")
    return open_gguf(gguf_file(ctx), n_ctx=ctx.recipe.model.max_context or DEFAULT_N_CTX,
                     label=f"gguf:{params.type}")


def add_gguf_f16_floor(ctx: StageContext, fidelity) -> None:
    """Score the model's shared F16 GGUF against the HF baseline's reference, once per model and build.

    Listed in every fidelity.json under ``noise_floor.<dataset>.others``: the distance that
    crossing engines alone puts between a GGUF scheme and the HF baseline.
    """
    from evals.llamacpp_eval import open_gguf
    from pipelines.llamacpp.convert import f16_gguf
    from pipelines.llamacpp.tools import build_dir_name

    label = f"gguf-f16.{build_dir_name()}"  # a new llama.cpp build measures it again
    if fidelity.has_floor(label):
        return
    scorer = open_gguf(f16_gguf(ctx.base_source), n_ctx=ctx.recipe.model.max_context or DEFAULT_N_CTX,
                       label="gguf:F16")
    try:
        fidelity.add_floor(label, scorer)
    finally:
        scorer.close()


def benchmark_engine(ctx: StageContext, quantizer: Quantizer):
    """bench/speed.json and bench/memory.json of a GGUF, measured by llama-bench.

    The baseline's numbers come from qeval's transformers benchmark: a GGUF scheme's cost
    relative to it crosses engines (docs/ says so wherever they are compared).
    """
    from evals.llamacpp_bench import gguf_facts, measure
    from evals.results import MemoryResult, SpeedResult
    from evals.roofline import cached_bandwidth, roofline
    from evals.speed import mean_decode_context_len
    from pipelines.llamacpp.tools import tool_path
    from pipelines.rundir import dir_bytes, runs_root

    bench = ctx.recipe.benchmark
    gguf = gguf_file(ctx)
    facts = gguf_facts(gguf)
    speed = measure(tool_path("llama-bench"), gguf, batch_sizes=bench.batch_sizes, prompt_lens=bench.prompt_lens,
                    gen_lens=bench.gen_lens, iters=bench.iters, warmup=bench.warmup)
    peak = speed.pop("peak_rss_bytes")
    what_ran = {"engine": "llama.cpp", "kernels": "ggml CPU backend, its own quantized dot products",
                "tensor_types": facts["tensor_types"], "architecture": facts["architecture"]}
    bandwidth = cached_bandwidth("cpu", runs_root() / ".cache" / "bandwidth.json")
    roof = None
    bs1 = [r for r in speed["results"] if r["batch_size"] == 1 and r["status"] == "ok"]
    if bs1:
        r = bs1[0]
        roof = roofline(r["decode_tok_s"]["median"], facts["weights_bytes"], facts["kv_bytes_per_token"],
                        mean_decode_context_len(r["prompt_len"], r["gen_len"]), bandwidth["bandwidth_bytes_s"],
                        unread_weight_bytes=facts["unread_weight_bytes"])
    outputs = [
        SpeedResult(**speed, what_ran=what_ran, roofline=roof, representative=True,
                    representative_reason=None).write(ctx.sdir.bench_dir / SpeedResult.FILE),
        MemoryResult(disk_bytes=dir_bytes(gguf.parent), weights_bytes=facts["weights_bytes"],
                     weights_bytes_by_device={"cpu": facts["weights_bytes"]}, peak_rss_bytes=peak,
                     cuda_peak_allocated_bytes=None, cuda_peak_reserved_bytes=None,
                     kv_bytes_per_token=facts["kv_bytes_per_token"], kv_dtype="float16",
                     get_memory_footprint_bytes=None, representative=True
                     ).write(ctx.sdir.bench_dir / MemoryResult.FILE),
    ]
    return outputs, {}
