"""`transformers serve`: the in-stack CPU engine for the Hugging Face-format checkpoints.

Which checkpoint formats it serves on CPU was found by starting it on each scheme's checkpoint of
the embedded model (docs/serving.md): dense, GPTQ, AWQ-GEMM, bitsandbytes (int8, nf4) and
torchao (fp8) load and answer. Formats not tried (compressed-tensors) are recorded as skipped
with the reason until someone checks them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from pipelines.engines.base import EngineLaunch
from pipelines.errors import UnsupportedHere

# quantizer `format` -> None (served) or why not. Formats not listed are not known to load.
CPU_FORMATS = ("dense", "gptq", "awq-gemm", "bitsandbytes", "torchao")
NOT_ON_CPU: dict[str, str] = {}


def _executable() -> Path:
    return Path(sys.executable).parent / "transformers"


def version() -> str:
    from importlib.metadata import version as v

    return v("transformers")


def launch(*, checkpoint: str, port: int, fmt: str, device: str, serve, threads: int, dtype: str | None = None,
           **_) -> EngineLaunch:
    """The `transformers serve` command for one checkpoint, or UnsupportedHere naming why not."""
    missing = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
    if missing or not _executable().is_file():
        what = ", ".join(missing) or "the `transformers` command"
        raise UnsupportedHere(f"transformers serve is not installed here (missing: {what}); install the "
                              "serving extra: pip install 'transformers[serving]'")
    if device == "cpu" and fmt not in CPU_FORMATS:
        why = NOT_ON_CPU.get(fmt, "that format has not been checked to load in it on CPU (see CPU_FORMATS)")
        raise UnsupportedHere(f"transformers serve cannot serve {fmt!r} checkpoints on CPU: {why}")
    block = 32
    cmd = [str(_executable()), "serve", checkpoint, "--device", device, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]
    if dtype:  # the sweep's compute dtype; unset, it serves in the checkpoint's (slow bf16 on AVX2)
        cmd += ["--dtype", dtype]
    settings = {"device": device, "threads": threads, "dtype": dtype or "auto",
                "continuous_batching": serve.continuous_batching}
    if serve.continuous_batching:
        # Cap the paged KV cache: by default it sizes itself for a GPU and takes ~10 GB of RAM on CPU.
        blocks = max(1, serve.kv_cache_tokens // block)
        batch_tokens = min(512, serve.kv_cache_tokens)  # unset, it sizes work buffers for a GPU too
        cmd += ["--continuous-batching", "--cb-block-size", str(block), "--cb-num-blocks", str(blocks),
                "--cb-max-batch-tokens", str(batch_tokens)]
        settings.update(cb_block_size=block, cb_num_blocks=blocks, cb_max_batch_tokens=batch_tokens)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
           "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
    return EngineLaunch(engine="transformers", version=version(), command=cmd, model_name=checkpoint,
                        exact_output_lengths=False, settings=settings, env=env)
