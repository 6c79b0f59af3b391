"""Recipe sections of the serve stage: the load (serve:), the latency SLO (slo:), the hardware's price.

Kept beside schema.py (which imports them) so the serve settings live in one place. Unknown
keys and non-positive values are errors at planning, like every recipe section.

Serve values are bounded: every number of seconds and every ratio must be
finite, and a load level is at most ``MAX_LEVEL`` concurrent streams (it becomes, e.g.,
``llama-server --parallel N``: a million slots is an out-of-memory kill, not a measurement).
Request counts are capped at ``MAX_REQUESTS_PER_LEVEL``, token counts (prompt, output, KV cache,
context) at ``MAX_TOKENS`` and engine threads at ``MAX_THREADS``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Unknown keys are rejected (schema.py's rule; defined here so schema.py can import this module)."""

    model_config = ConfigDict(extra="forbid", frozen=False)


PositiveMs = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
MAX_LEVEL = 4096  # concurrent streams of one load level (the engine's parallel slots)
MAX_REQUESTS_PER_LEVEL = 1_000_000
MAX_TOKENS = 1 << 24  # 16.8M: prompt, output, KV-cache and context token counts
MAX_THREADS = 1024
Tokens = Annotated[int, Field(le=MAX_TOKENS)]
Engine = Literal["auto", "transformers", "llama.cpp", "vllm", "endpoint"]


class SloConfig(Strict):
    """Latency targets a load level must meet (every one set) to count towards capacity."""

    ttft_ms_p99: PositiveMs | None = Field(None, description="p99 time to first token, ms")
    itl_ms_p99: PositiveMs | None = Field(None, description="p99 inter-token latency, ms")
    tpot_ms_p99: PositiveMs | None = Field(None, description="p99 time per output token, ms")
    e2e_ms_p99: PositiveMs | None = Field(None, description="p99 end-to-end request latency, ms")

    def targets(self) -> dict[str, float]:
        """The SLOs that are set: metric name (as in serve.json's levels) -> limit."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class HardwareConfig(Strict):
    """What the serving machine costs: turns capacity into $ per million output tokens."""

    name: str | None = None
    price_per_hour: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None, description="USD per hour for the whole machine the engine runs on")
    memory_gib: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="memory the engine may use (GPU memory on a GPU), for the KV-cache headroom")
    overhead_gib: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        0.5, description="runtime, activations and allocator slack kept out of the KV-cache headroom")


class ServeConfig(Strict):
    """How the serve stage starts an engine and loads it."""

    enabled: bool = True
    engine: Engine = Field("auto", description="auto: the scheme's engine (transformers or llama.cpp) on CPU, "
                                              "vllm on CUDA")
    endpoint: str | None = Field(None, description="engine 'endpoint': the base URL of a running server "
                                                   "(http(s)://host[:port][/path]; no credentials or query)")
    endpoint_model: str | None = Field(None, description="model name the endpoint serves (default: the one "
                                                         "it lists; required when it lists several)")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="engine 'endpoint': the environment variable holding its API "
                                                "key, sent as a Bearer token (the key is never stored)")
    verify_tls: bool = Field(True, description="engine 'endpoint': verify an https:// server's certificate")
    vllm_command: str | None = Field(None, description="the `vllm` executable of vLLM's own environment "
                                                       "(default: $QEVAL_VLLM_COMMAND, else `vllm` on PATH)")
    prompt_tokens: Tokens = Field(256, ge=1)
    prompt_tokens_stdev: Tokens = Field(128, ge=0)
    output_tokens: Tokens = Field(128, ge=1)
    output_tokens_stdev: Tokens = Field(64, ge=0)
    levels: list[Annotated[int, Field(ge=1, le=MAX_LEVEL)]] = Field(
        [1, 2, 4, 8, 16], min_length=1, description=f"concurrent streams, each at most {MAX_LEVEL}; 1 is the "
                                                    "synchronous level")
    requests_per_level: int = Field(32, ge=1, le=MAX_REQUESTS_PER_LEVEL)
    max_seconds_per_level: PositiveSeconds = Field(120.0, description="a finite number of seconds")
    warmup_requests: int = Field(2, ge=0, le=MAX_REQUESTS_PER_LEVEL,
                                 description="requests sent before the first level, not measured")
    start_timeout_s: PositiveSeconds = Field(300.0, description="a finite number of seconds")
    port: int | None = Field(None, ge=1, le=65535, description="default: a free port on 127.0.0.1")
    continuous_batching: bool = Field(True, description="transformers serve --continuous-batching")
    kv_cache_tokens: Tokens = Field(4096, ge=64, description="KV-cache tokens the CPU engines reserve")
    threads: int | None = Field(None, ge=1, le=MAX_THREADS, description="engine threads (default: the CPUs this process may use, less one for the load generator)")
    saturation_gain: float = Field(0.05, ge=0, allow_inf_nan=False, description="stop the sweep once output tokens/s rises by less "
                                                           "than this fraction while p99 latency rises")
    stop_after_slo_miss: bool = Field(False, description="stop the sweep at the first level that misses a latency "
                                                         "SLO (more load only adds latency): saves time, "
                                                         "keeps capacity")
    context_len: Tokens | None = Field(None, ge=1, description="tokens per sequence for the KV-cache headroom "
                                                            "(default: prompt + output tokens)")

    @model_validator(mode="after")
    def _levels_rise(self) -> ServeConfig:
        if self.levels != sorted(set(self.levels)):
            raise ValueError(f"serve.levels {self.levels} must rise strictly (e.g. [1, 2, 4, 8])")
        if self.engine == "endpoint" and not self.endpoint:
            raise ValueError("serve.engine 'endpoint' needs serve.endpoint: the base URL of the running server")
        if self.endpoint:
            check_endpoint_url(self.endpoint)
        return self


def check_endpoint_url(url: str) -> None:
    """An endpoint URL that can be stored and logged as it is: it carries no secret.

    A user name, password, query string or fragment would land in recipe.yaml, serve.json, the
    MLflow params and the log, so they are refused; the key goes in serve.api_key_env.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"serve.endpoint must be an http:// or https:// URL with a host, e.g. "
                         f"http://10.0.0.5:8000 (got a URL with scheme {parts.scheme or 'none'!r})")
    if parts.username or parts.password:
        raise ValueError("serve.endpoint carries credentials (user:password@), which would be stored and logged: "
                         "remove them, put the API key in an environment variable and name it in "
                         "serve.api_key_env (e.g. --set serve.api_key_env=MY_ENDPOINT_KEY)")
    if parts.query or parts.fragment:
        raise ValueError("serve.endpoint has a query string or fragment (?… or #…), which may hold a token and "
                         "would be stored and logged: give the base URL only, and the API key in serve.api_key_env")


def merge_section(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Later layers win key by key; None values in a later layer do not erase earlier ones."""
    out: dict[str, Any] = {}
    for layer in layers:
        out.update({k: v for k, v in (layer or {}).items() if v is not None})
    return out
