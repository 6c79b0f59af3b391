"""llama.cpp's `llama-server`: the CPU engine for GGUF schemes (integer kernels, parallel slots).

The binary comes from qeval's own llama.cpp build (pipelines.llamacpp); where it is missing the
scheme's serve stage is a recorded skip naming how to build it.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.engines.base import EngineLaunch
from pipelines.errors import UnsupportedHere


def gguf_file(checkpoint: str) -> Path:
    path = Path(checkpoint)
    if path.is_file() and path.suffix == ".gguf":
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if not found:
        raise UnsupportedHere(f"llama-server needs a .gguf file; none in {checkpoint}")
    return found[0]


def launch(*, checkpoint: str, port: int, serve, threads: int, **_) -> EngineLaunch:
    from pipelines.llamacpp.tools import build_dir_name, tool_path

    binary = tool_path("llama-server")  # UnsupportedHere when the build is missing
    slots = max(serve.levels)
    ctx_per_slot = serve.context_len or (serve.prompt_tokens + serve.prompt_tokens_stdev * 2
                                         + serve.output_tokens + serve.output_tokens_stdev * 2)
    ctx = max(serve.kv_cache_tokens, slots * ctx_per_slot)
    cmd = [str(binary), "-m", str(gguf_file(checkpoint)), "--host", "127.0.0.1", "--port", str(port),
           "-t", str(threads), "--parallel", str(slots), "-c", str(ctx), "--no-webui"]
    settings = {"threads": threads, "parallel": slots, "ctx_size": ctx, "build": build_dir_name()}
    return EngineLaunch(engine="llama.cpp", version=build_dir_name(), command=cmd, model_name="gguf",
                        settings=settings, env={"LD_LIBRARY_PATH": str(binary.parent)})
