"""What ran (linear-layer storage after a forward, matmul operators) and the representative rule.

Every model here is real: the dense tiny Llama, bitsandbytes nf4 and torchao float8 on it,
and a compressed-tensors FP8_DYNAMIC checkpoint written by qeval's own quantizer, which
transformers decompresses to dense float weights on the first forward on a CPU.
"""

from __future__ import annotations

import pytest

from evals.kernels import (
    DENSE_FLOAT,
    PACKED,
    TENSOR_SUBCLASS,
    judge_representative,
    linear_layers,
    what_ran,
)

N_LINEARS = 15  # 7 per layer * 2 layers + lm_head


def _load(path, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs.setdefault("dtype", torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(path, device_map="cpu", **kwargs).eval()


def _storages(record) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in record["layers"]:
        out[row["storage"]] = out.get(row["storage"], 0) + row["count"]
    return out


def test_dense_model_runs_float_matmuls_and_is_representative_as_the_reference(tiny_llama_dir):
    record = what_ran(_load(tiny_llama_dir), "cpu")
    assert _storages(record) == {DENSE_FLOAT: N_LINEARS}
    assert record["quantized_layers"] == 0 and record["dense_float_layers"] == N_LINEARS
    assert record["layers"][0]["dtype"] == "bfloat16"
    assert set(record["matmul_ops"]) & {"aten::mm", "aten::addmm"}
    assert record["low_precision_matmul_ops"] == []
    assert judge_representative(record, expects_quantized=False) == (True, None)
    # The same dense weights for a scheme that stores quantized ones: it ran decompressed.
    representative, reason = judge_representative(record, expects_quantized=True)
    assert representative is False and "dense float" in reason


def test_nf4_keeps_packed_weights_and_runs_the_bitsandbytes_kernel(tiny_llama_dir):
    import torch
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    record = what_ran(_load(tiny_llama_dir, quantization_config=config), "cpu")
    rows = {(r["module"], r["storage"], r["dtype"]): r["count"] for r in record["layers"]}
    assert rows[("bitsandbytes.Linear4bit", PACKED, "uint8")] == N_LINEARS - 1
    assert rows[("torch.Linear", DENSE_FLOAT, "bfloat16")] == 1  # lm_head stays dense
    assert any(op.startswith("bitsandbytes::") for op in record["low_precision_matmul_ops"]), record["matmul_ops"]
    assert judge_representative(record, expects_quantized=True) == (True, None)


def test_torchao_float8_weights_stay_a_tensor_subclass(tiny_llama_dir):
    from torchao.quantization import Float8WeightOnlyConfig
    from transformers import TorchAoConfig

    record = what_ran(_load(tiny_llama_dir, quantization_config=TorchAoConfig(Float8WeightOnlyConfig())), "cpu")
    subclass = [r for r in record["layers"] if r["storage"] == TENSOR_SUBCLASS]
    assert sum(r["count"] for r in subclass) >= N_LINEARS - 1
    assert {r["dtype"] for r in subclass} == {"float8_e4m3fn"}
    assert {r["weight"] for r in subclass} == {"Float8Tensor"}
    # Weight-only: the float8 weight is dequantized into a float matmul, torchao's real CPU path.
    assert "aten::mm" in record["matmul_ops"]
    assert judge_representative(record, expects_quantized=True) == (True, None)


@pytest.fixture(scope="module")
def fp8_dynamic_checkpoint(tiny_llama_dir, tmp_path_factory):
    """A compressed-tensors FP8_DYNAMIC checkpoint, written by qeval's quantizer (no calibration)."""
    from pipelines.quantizers import get_quantizer
    from pipelines.quantizers.base import QuantizeRequest

    quantizer = get_quantizer("fp8-dynamic")
    out = tmp_path_factory.mktemp("fp8_dynamic")
    request = QuantizeRequest(
        source=str(tiny_llama_dir), revision=None, dtype="float32", device="cpu",
        params=quantizer.parse_params({}, "test"), ignore=["lm_head"], calibration=None, out_dir=out,
    )
    quantizer.quantize(request)
    return quantizer, out


def test_compressed_tensors_decompressed_on_first_forward_is_not_representative(fp8_dynamic_checkpoint):
    quantizer, checkpoint = fp8_dynamic_checkpoint
    model = quantizer.load(str(checkpoint), "cpu", "float32")
    before = linear_layers(model)
    # On load the weights are still float8 ...
    assert before["quantized_layers"] == N_LINEARS - 1, before
    assert before["activation_quantized_layers"] == N_LINEARS - 1
    record = what_ran(model, "cpu")
    # ... and after the first forward every linear holds dense float32.
    assert _storages(record) == {DENSE_FLOAT: N_LINEARS}, record["layers"]
    assert record["low_precision_matmul_ops"] == []
    representative, reason = judge_representative(record, expects_quantized=not quantizer.is_reference)
    assert representative is False and "decompressed" in reason


def test_declared_activation_quantization_needs_a_low_precision_matmul(fp8_dynamic_checkpoint):
    """Rule 2, on the checkpoint as loaded (float8 weights, FP8_DYNAMIC activations declared)."""
    quantizer, checkpoint = fp8_dynamic_checkpoint
    model = quantizer.load(str(checkpoint), "cpu", "float32")
    as_loaded = {**linear_layers(model), "matmul_ops": {"aten::mm": 14}, "low_precision_matmul_ops": []}
    representative, reason = judge_representative(as_loaded, expects_quantized=True)
    assert representative is False and "declare quantized activations" in reason
    with_fp8_gemm = {**as_loaded, "low_precision_matmul_ops": ["aten::_scaled_mm"]}
    assert judge_representative(with_fp8_gemm, expects_quantized=True) == (True, None)


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory, tiny_llama_dir):
    """The quantize and benchmark stages of the tiny Llama, baseline and fp8-dynamic, as a sweep runs them."""
    import os

    from pipelines.execution.local import run_stages_in_process
    from pipelines.execution.plan import SweepOptions, plan, write_plan

    os.environ["QEVAL_RUNS_DIR"] = str(tmp_path_factory.mktemp("bench_runs"))
    schemes = ["baseline", "fp8-dynamic"]
    overrides = {"benchmark": {"batch_sizes": [1], "prompt_lens": [8], "gen_lens": [3], "warmup": 0, "iters": 1}}
    opts = SweepOptions(model=str(tiny_llama_dir), schemes=schemes, suite="smoke", tasks=[],
                        overrides=overrides, quiet=True)
    p = plan(opts)
    write_plan(p, opts)
    status = {s: run_stages_in_process(p.model, s, ("quantize", "benchmark"), quiet=True) for s in schemes}
    yield p.model, status
    os.environ.pop("QEVAL_RUNS_DIR", None)


@pytest.mark.parametrize(("scheme", "representative"), [("baseline", True), ("fp8-dynamic", False)])
def test_benchmark_stage_records_what_ran_and_derives_representative(bench_runs, scheme, representative):
    from evals.results import MemoryResult, SpeedResult
    from pipelines.environment import cpu_model
    from pipelines.rundir import scheme_dir

    model, status = bench_runs
    assert status[scheme] == 0
    bench = scheme_dir(model, scheme).bench_dir
    speed, memory = SpeedResult.read(bench / "speed.json"), MemoryResult.read(bench / "memory.json")
    assert (speed.device_kind, speed.device_name) == ("cpu", cpu_model())
    assert speed.what_ran["dense_float_layers"] == N_LINEARS
    assert speed.representative is memory.representative is representative
    assert (speed.representative_reason is None) is representative
    assert speed.roofline["context_len"] == 8 + 3 / 2  # evals.speed.mean_decode_context_len
