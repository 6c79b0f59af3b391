"""vLLM (`vllm serve`) on CUDA, from its own environment.

vLLM's wheels pin their own torch (a CUDA build), so it does not share qeval's environment:
install it in a virtual environment of its own and point qeval at its `vllm` command with
serve.vllm_command or $QEVAL_VLLM_COMMAND. Only ever run on a GPU machine (gpu-marked tests,
`make gpu-check`).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from pipelines.engines.base import EngineLaunch
from pipelines.errors import UnsupportedHere


def command(configured: str | None) -> str:
    cmd = configured or os.environ.get("QEVAL_VLLM_COMMAND") or shutil.which("vllm")
    if not cmd or not (shutil.which(cmd) or os.access(cmd, os.X_OK)):
        raise UnsupportedHere("vLLM is not installed: create its own environment (python -m venv vllm-env && "
                              "vllm-env/bin/pip install vllm) and set QEVAL_VLLM_COMMAND=vllm-env/bin/vllm")
    return cmd


def version(cmd: str) -> str:
    out = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=120, check=False)
    return (out.stdout.strip().splitlines() or ["unknown"])[-1]


def launch(*, checkpoint: str, port: int, device: str, serve, **_) -> EngineLaunch:
    if device != "cuda":
        raise UnsupportedHere(f"vLLM serves on CUDA here; the suite's device is {device}")
    cmd = command(serve.vllm_command)
    max_len = serve.context_len or (serve.prompt_tokens + serve.output_tokens
                                    + 4 * (serve.prompt_tokens_stdev + serve.output_tokens_stdev))
    argv = [cmd, "serve", checkpoint, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "qeval",
            "--max-model-len", str(max_len), "--max-num-seqs", str(max(serve.levels))]
    settings = {"max_model_len": max_len, "max_num_seqs": max(serve.levels)}
    return EngineLaunch(engine="vllm", version=version(cmd), command=argv, model_name="qeval", settings=settings)
