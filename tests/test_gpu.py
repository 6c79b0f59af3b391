"""GPU code paths: the same stages on CUDA with the libraries' fast kernels. Skipped without CUDA."""

from __future__ import annotations

import pytest

from pipelines.execution.local import run_stages_in_process
from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.rundir import read_json, scheme_dir

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_runs(tmp_path_factory, tiny_llama_dir):
    import os

    os.environ["QEVAL_RUNS_DIR"] = str(tmp_path_factory.mktemp("gpu_runs"))
    opts = SweepOptions(model=str(tiny_llama_dir), schemes=["gptq", "awq", "nf4", "fp8", "fp8-dynamic"],
                        suite="smoke", tasks=[], quiet=True,
                        overrides={"device": "cuda", "calibration": {"n_samples": 4, "seq_len": 64}})
    p = plan(opts)
    write_plan(p, opts)
    yield p
    os.environ.pop("QEVAL_RUNS_DIR", None)


@pytest.mark.parametrize("scheme", ["baseline", "gptq", "awq", "nf4", "fp8"])
def test_scheme_quantizes_reloads_and_benchmarks_on_cuda(cuda_runs, scheme):
    assert run_stages_in_process(cuda_runs.model, scheme, ("quantize", "benchmark"), quiet=True) == 0
    import torch

    from evals.results import SpeedResult

    info = read_json(scheme_dir(cuda_runs.model, scheme).quantize_json)
    speed = SpeedResult.read(scheme_dir(cuda_runs.model, scheme).bench_dir / "speed.json")
    assert info["device"] == "cuda"
    assert speed.device_kind == "cuda" and speed.device_name == torch.cuda.get_device_name(0)
    if scheme != "baseline":
        # the weights stayed quantized on the GPU, so the costs are the scheme's own
        assert speed.what_ran["quantized_layers"] > 0 and speed.representative, speed.what_ran
    if scheme in ("gptq", "awq"):
        # a CUDA kernel (Marlin, Exllama, ...) rather than the CPU torch fallback
        modules = [row["module"] for row in speed.what_ran["layers"]]
        assert not any("TorchAten" in m for m in modules), modules


def test_fp8_dynamic_says_when_it_is_emulated(cuda_runs):
    import torch

    assert run_stages_in_process(cuda_runs.model, "fp8-dynamic", ("quantize",), quiet=True) == 0
    info = read_json(scheme_dir(cuda_runs.model, "fp8-dynamic").quantize_json)
    has_fp8 = torch.cuda.get_device_capability(0) >= (8, 9)
    assert info["emulated"] is (not has_fp8)
    if not has_fp8:
        assert any("'fp8'" in note for note in info["notes"])
