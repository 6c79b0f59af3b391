"""Serving engines: how to start one scheme's checkpoint as an OpenAI-compatible server.

Each engine module builds an :class:`EngineLaunch` (command, health path, request format,
version, settings) or raises UnsupportedHere with the reason it cannot serve the scheme, which
the serve stage records as a skip. ``process`` starts, health-checks and stops the server.
"""

from __future__ import annotations

from typing import Any

from pipelines.engines.base import ENGINES, EngineLaunch, choose_engine, cpu_threads  # noqa: F401
from pipelines.errors import UnsupportedHere


def launch(engine: str, **kwargs: Any) -> EngineLaunch:
    """Build the launch of ``engine`` (see each module's ``launch`` for the arguments)."""
    if engine == "transformers":
        from pipelines.engines import transformers_serve as mod
    elif engine == "llama.cpp":
        from pipelines.engines import llamacpp_server as mod
    elif engine == "vllm":
        from pipelines.engines import vllm as mod
    elif engine == "endpoint":
        from pipelines.engines import endpoint as mod
    else:
        raise UnsupportedHere(f"unknown serving engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return mod.launch(**kwargs)
