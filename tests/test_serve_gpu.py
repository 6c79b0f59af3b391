"""The default model's serve stage on vLLM (`make gpu-check`): GPU machines only.

vLLM lives in its own environment; QEVAL_VLLM_COMMAND names its `vllm` executable.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from helpers import run_qeval

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_default_model_serves_on_vllm(tmp_path):
    if not os.environ.get("QEVAL_VLLM_COMMAND"):
        pytest.skip("set QEVAL_VLLM_COMMAND to the vllm executable of vLLM's own environment")
    env = {"QEVAL_RUNS_DIR": str(tmp_path / "runs")}
    common = ("--model", "smollm2-135m", "--scheme", "baseline", "--suite", "quick", "--set", "device=cuda")
    done = run_qeval("quantize", *common, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    served = run_qeval("serve", *common, "--set", "serve.engine=vllm", "--set", "serve.levels=[1,4,16]",
                       env=env, timeout=900)
    assert served.returncode == 0, served.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "smollm2-135m" / "baseline" / "serve" / "serve.json").read_text())
    assert result["engine"] == "vllm" and result["device_kind"] == "cuda"
    assert all(level["errors"] == 0 and level["ttft_ms"]["p99"] > 0 for level in result["levels"])
    # the server is stopped: nothing of vLLM's is left running
    left = subprocess.run(["pgrep", "-f", "vllm serve"], capture_output=True, text=True).stdout.split()
    assert not left, f"vLLM processes left behind: {left}"
