"""Serve stage: the scheme's checkpoint in a real OpenAI-compatible server, under rising load.

Starts the engine the recipe picks (pipelines.engines) on 127.0.0.1 on a free port, waits on its
health endpoint, warms it up, then drives GuideLLM (evals.load) at each concurrency level,
synchronous first, stopping once the server is over-saturated. Writes ``serve/serve.json``
(evals.results.ServeResult) with percentiles per level, capacity at the SLO, goodput, $/1M output
tokens and the KV-cache headroom. The server is stopped by its pid whatever happens; a scheme
the engine cannot serve is a recorded skip.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.engines import EngineLaunch, choose_engine, cpu_threads, launch
from pipelines.engines.process import EngineStartError, free_port, log_tail, running_server
from pipelines.errors import UnsupportedHere
from pipelines.quantizers import get_quantizer
from pipelines.stages.common import StageContext, run_stage
from pipelines.stages.keys import serve_key

log = logging.getLogger(__name__)


class ServerDiedError(RuntimeError):
    """The server exited while load was running."""


def run(ctx: StageContext) -> str:
    return run_stage(ctx, "serve", serve_key(ctx), lambda: _serve(ctx))


def engine_launch(ctx: StageContext, port: int) -> EngineLaunch:
    """Which engine serves this scheme, and how; UnsupportedHere (a recorded skip) when none can."""
    serve = ctx.recipe.serve
    if not serve.enabled:
        raise UnsupportedHere("the suite turns the serve stage off (serve.enabled: false)")
    quantizer = get_quantizer(ctx.recipe.scheme.quantizer)
    engine = choose_engine(serve.engine, quantizer.engine, ctx.device)
    # The compute dtype, where the engine's loader takes one (a bitsandbytes or torchao checkpoint
    # carries its own): served numbers are then those of the precision the stages measured.
    dtype = None if quantizer.loads_in_saved_dtype else ctx.compute_dtype
    return launch(engine, checkpoint=ctx.checkpoint(), port=port, fmt=quantizer.format, device=ctx.device,
                  serve=serve, threads=serve.threads or cpu_threads(), dtype=dtype)


def _serve(ctx: StageContext) -> tuple[list[Path], dict]:
    from evals.results import ServeResult

    port = ctx.recipe.serve.port or free_port()
    spec = engine_launch(ctx, port)
    log.info("%s/%s: serving with %s %s", ctx.model, ctx.scheme, spec.engine, spec.version)
    log_path = ctx.sdir.serve_dir / "server.log"
    if spec.command is None:  # an endpoint someone else runs: is it this scheme's model?
        from pipelines.engines.endpoint import check_geometry

        spec.settings["served_model_check"] = check_geometry(spec.served or {}, _base_config(ctx))
        measured = _drive(ctx, spec, spec.base_url, alive=lambda: True, log_path=None)
        startup_s = 0.0
    else:
        try:
            with running_server(spec.command, port, log_path, spec.health_path, ctx.recipe.serve.start_timeout_s,
                                env=spec.env) as server:
                startup_s = server.startup_s
                measured = _drive(ctx, spec, server.base_url, alive=server.alive, log_path=log_path)
        except EngineStartError as exc:
            raise RuntimeError(f"{spec.engine} did not start: {exc}") from None
    result = ServeResult(engine=spec.engine, engine_version=spec.version, engine_settings=spec.settings,
                         device_kind=ctx.device, startup_s=round(startup_s, 3), **measured)
    return [result.write(ctx.sdir.serve_dir / ServeResult.FILE)], {"engine": spec.engine}


def _drive(ctx: StageContext, spec: EngineLaunch, base_url: str, alive, log_path: Path | None) -> dict[str, Any]:
    """Warm up, run the levels (stopping at over-saturation), compute capacity and cost."""
    from importlib.metadata import version

    from evals.capacity import capacity, level_meets
    from evals.load import LoadError, LoadSpec, is_over_saturated, run_level, warm_up

    serve, slo = ctx.recipe.serve, ctx.recipe.slo
    warmup_s = warm_up(base_url, spec.model_name, spec.request_format, serve.warmup_requests,
                       api_key=spec.api_key, verify_tls=spec.verify_tls)
    load = LoadSpec(base_url=base_url, model_name=spec.model_name, tokenizer_dir=ctx.base_source,
                    api_key=spec.api_key, verify_tls=spec.verify_tls,
                    request_format=spec.request_format, prompt_tokens=serve.prompt_tokens,
                    prompt_tokens_stdev=serve.prompt_tokens_stdev, output_tokens=serve.output_tokens,
                    output_tokens_stdev=serve.output_tokens_stdev, exact_output_lengths=spec.exact_output_lengths,
                    requests=serve.requests_per_level, max_seconds=serve.max_seconds_per_level)
    levels: list[dict[str, Any]] = []
    stopped = "all levels ran"
    for streams in serve.levels:
        try:
            level = run_level(load, streams, ctx.sdir.serve_dir / "guidellm" / f"concurrency-{streams}.json")
        except LoadError as exc:
            if not alive():
                raise ServerDiedError(_died(spec, streams, levels, log_path)) from None
            raise RuntimeError(f"load at {streams} concurrent streams failed: {exc}") from None
        if not alive():  # requests errored because the server went away: not a measurement
            raise ServerDiedError(_died(spec, streams, levels, log_path))
        levels.append(level)
        log.info("%s/%s: %d streams: %.2f req/s, %.1f out tok/s, ttft p99 %s ms, itl p99 %s ms, %d errors",
                 ctx.model, ctx.scheme, streams, level["requests_per_s"], level["output_tokens_per_s"],
                 _ms(level["ttft_ms"]["p99"]), _ms(level["itl_ms"]["p99"]), level["errors"])
        if level["requests_ok"] == 0:
            stopped = (f"no request completed at {streams} streams within {serve.max_seconds_per_level:g} s: "
                       "more load cannot meet any SLO")
            break
        missed = level_meets(level, slo.targets())[1]
        if serve.stop_after_slo_miss and missed:
            stopped = f"missed the SLO at {streams} streams ({'; '.join(missed)}): stop_after_slo_miss"
            break
        if len(levels) > 1 and is_over_saturated(levels[-2], level, serve.saturation_gain):
            stopped = (f"over-saturated at {streams} streams: output tokens/s rose less than "
                       f"{serve.saturation_gain:.0%} while p99 latency rose")
            break
    cap = capacity(levels, slo.targets())
    return {"load": {"generator": "guidellm", "version": version("guidellm"), "request_format": spec.request_format,
                     "prompt_tokens": serve.prompt_tokens, "prompt_tokens_stdev": serve.prompt_tokens_stdev,
                     "output_tokens": serve.output_tokens, "output_tokens_stdev": serve.output_tokens_stdev,
                     "exact_output_lengths": spec.exact_output_lengths, "requests_per_level": serve.requests_per_level,
                     "max_seconds_per_level": serve.max_seconds_per_level, "tokenizer": "the model's own",
                     "warmup_requests": serve.warmup_requests},
            "levels": levels, "stopped_because": stopped, "capacity": cap, "cost": _cost(ctx, cap),
            "warmup_s": round(warmup_s, 3)}


def _cost(ctx: StageContext, cap: dict[str, Any]) -> dict[str, Any]:
    from evals.capacity import kv_bytes_per_token, kv_headroom, usd_per_million_tokens

    hw, serve = ctx.recipe.hardware, ctx.recipe.serve
    config = _base_config(ctx)
    context_len = serve.context_len or serve.prompt_tokens + serve.output_tokens
    headroom = kv_headroom(hw.memory_gib, _weights_bytes(ctx.checkpoint()), hw.overhead_gib,
                           kv_bytes_per_token(config, ctx.compute_dtype), context_len)
    return {"hardware": hw.model_dump(), "usd_per_m_output_tokens":
            usd_per_million_tokens(hw.price_per_hour, cap["output_tokens_per_s_at_capacity"]), **headroom}


def _base_config(ctx: StageContext):
    from transformers import AutoConfig

    model = ctx.recipe.model
    return AutoConfig.from_pretrained(ctx.base_source, revision=model.revision, trust_remote_code=model.trust_remote_code)


def _weights_bytes(checkpoint: str) -> int:
    """Bytes of the weight files the engine loads (safetensors, bin or gguf)."""
    path = Path(checkpoint)
    if path.is_file():
        return path.stat().st_size
    files = [p for p in path.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf")] if path.is_dir() else []
    return sum(p.stat().st_size for p in files)


def _died(spec: EngineLaunch, streams: int, levels: list, log_path: Path | None) -> str:
    tail = log_tail(log_path) if log_path else ""
    return (f"the {spec.engine} server exited during the load at {streams} concurrent streams "
            f"({len(levels)} level(s) had finished; nothing is written for a partial sweep). "
            f"Server log tail:\n{tail}")


def _ms(x: float | None) -> str:
    return f"{x:.0f}" if x is not None else "-"
