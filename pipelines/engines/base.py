"""What every engine module shares: the launch description, the thread count, the engine choice."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

ENGINES = ("transformers", "llama.cpp", "vllm", "endpoint")


@dataclass
class EngineLaunch:
    """Everything needed to start (or reach) a server and drive load against it."""

    engine: str  # one of ENGINES
    version: str
    command: list[str] | None  # None: an endpoint that is already running
    model_name: str  # the "model" field of each request
    health_path: str = "/health"
    request_format: str = "/v1/completions"
    # GuideLLM asks vLLM-style engines for exact output lengths with `ignore_eos`; transformers
    # serve rejects that field (HTTP 422), so its outputs are capped with max_tokens instead.
    exact_output_lengths: bool = True
    base_url: str | None = None  # endpoint only
    settings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    # A server someone else runs: its /v1/models entry, checked against the scheme's model
    # before any load is sent (pipelines.engines.endpoint.check_geometry).
    served: dict[str, Any] | None = None
    api_key: str | None = None  # sent as a Bearer token on every request; never stored
    verify_tls: bool = True


def cpu_threads() -> int:
    """Engine threads: the CPUs this process may use, less one for the load generator and the
    server's HTTP loop. Measured on 2 cores: `transformers serve` with 2 OpenMP threads beside
    GuideLLM took 30-80 s per 32-token request (threads spinning at barriers while preempted),
    with 1 thread 4 s."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


def choose_engine(configured: str, quantizer_engine: str, device: str) -> str:
    """The engine for a scheme: the recipe's choice, else vLLM on CUDA, else the scheme's own engine."""
    if configured != "auto":
        return configured
    if device == "cuda":
        return "vllm"
    return quantizer_engine
