"""What actually ran: the storage of each linear layer after a forward, and the matmul operators seen.

A scheme's name says what was meant to run; this module records what did. After one
forward (the first forward is where compressed-tensors checkpoints decompress to dense
weights, and where some backends repack), every linear layer's weight storage is read:

- ``dense_float``: a plain tensor in a 16- or 32-bit float dtype (unquantized, or decompressed);
- ``packed``: a plain tensor in a narrower dtype (int8, uint8/int32 packed 4-bit, float8);
- ``tensor_subclass``: a wrapper tensor subclass (torchao) whose inner tensors hold the data.

Then a short ``torch.profiler`` pass over a second forward lists the matmul operators that
ran (``aten::mm``/``aten::addmm`` on float weights, ``aten::_int_mm``,
``aten::_scaled_mm``, ``aten::_weight_int4pack_mm``, ``bitsandbytes::*``, ...).

:func:`judge_representative` turns this evidence into the ``representative`` flag of
``bench/speed.json`` and ``bench/memory.json``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# Storage kinds of a linear layer's weight (see the module docstring).
DENSE_FLOAT = "dense_float"
PACKED = "packed"
TENSOR_SUBCLASS = "tensor_subclass"

# Plain float matmuls: a weight-only scheme that dequantizes runs these on a float copy.
FLOAT_MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"})
# Matmuls on low-precision operands (integer or float8 GEMMs, packed-weight GEMMs).
_LOW_PRECISION_OP_MARKS = ("_int_mm", "_scaled_mm", "int4pack_mm", "int8pack_mm", "int8_linear_matmul",
                           "int8_scaled_mm", "gemv_4bit", "gemm_4bit", "marlin", "exllama", "fp8_gemm",
                           "cutlass_scaled_mm")
_MATMUL_MARKS = ("mm", "gemm", "gemv", "matmul")
_PROFILE_PROMPT_TOKENS = 8


def _is_linear(module) -> bool:
    """Return whether a module is a linear layer, dense or quantized."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    name = type(module).__name__.lower()
    # Quantized linears of gptqmodel and others do not subclass nn.Linear.
    return "linear" in name and (hasattr(module, "qweight") or hasattr(module, "in_features"))


def _largest_tensor(tensors):
    return max(tensors, key=lambda t: t.numel() * t.element_size(), default=None)


def layer_storage(module) -> dict[str, str] | None:
    """Return how one linear layer holds its weight: module class, weight class, storage and dtype.

    The weight is the largest tensor the module holds directly (``weight``, or ``qweight``
    for modules without one); its dtype is that of its largest inner tensor for subclasses.
    """
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    held = [t for t in list(module._parameters.values()) + list(module._buffers.values()) if t is not None]
    weight = _largest_tensor(held)
    if weight is None:
        return None
    cls = type(module)
    row = {"module": f"{cls.__module__.split('.')[0]}.{cls.__name__}", "weight": type(weight).__name__}
    if is_traceable_wrapper_subclass(weight):
        names, _ = weight.__tensor_flatten__()
        inner = _largest_tensor([getattr(weight, n) for n in names])
        dtype = inner.dtype if inner is not None else weight.dtype
        row.update(storage=TENSOR_SUBCLASS, dtype=str(dtype).removeprefix("torch."))
        return row
    dense = weight.dtype.is_floating_point and weight.element_size() >= 2
    row.update(storage=DENSE_FLOAT if dense else PACKED, dtype=str(weight.dtype).removeprefix("torch."))
    return row


def _declares_quantized_activations(module) -> bool:
    """Return whether a layer's own quantization settings quantize its inputs (W8A8, FP8 dynamic).

    compressed-tensors hangs ``quantization_scheme.input_activations`` on each layer;
    torchao activation-quantizing subclasses carry ``act_quant_kwargs``.
    """
    scheme = getattr(module, "quantization_scheme", None)
    if getattr(scheme, "input_activations", None) is not None:
        return True
    return getattr(getattr(module, "weight", None), "act_quant_kwargs", None) is not None


def linear_layers(model) -> dict[str, Any]:
    """Return the storage summary of every linear layer as it is now.

    ``layers``: one row per distinct (module, weight class, storage, dtype) with its count;
    ``quantized_layers``/``dense_float_layers``: counts; ``activation_quantized_layers``:
    layers whose settings declare quantized inputs.
    """
    counts: Counter = Counter()
    activation_layers = 0
    for module in model.modules():
        if not _is_linear(module):
            continue
        row = layer_storage(module)
        if row is None:
            continue
        counts[tuple(sorted(row.items()))] += 1
        activation_layers += _declares_quantized_activations(module)
    rows = [{**dict(key), "count": n} for key, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    dense = sum(r["count"] for r in rows if r["storage"] == DENSE_FLOAT)
    return {
        "layers": rows,
        "quantized_layers": sum(r["count"] for r in rows) - dense,
        "dense_float_layers": dense,
        "activation_quantized_layers": activation_layers,
    }


def _is_matmul_op(name: str) -> bool:
    if name in FLOAT_MATMUL_OPS or is_low_precision_op(name):
        return True
    namespace, _, op = name.partition("::")
    # Operators of quantization libraries (bitsandbytes::, torchao::, gptqmodel's, vLLM's _C::).
    return bool(op) and namespace not in ("aten", "prim") and any(m in op for m in _MATMUL_MARKS)


def is_low_precision_op(name: str) -> bool:
    """Return whether an operator multiplies low-precision operands (int8/fp8/packed 4-bit)."""
    return any(mark in name for mark in _LOW_PRECISION_OP_MARKS)


def _forward(model, device, vocab_size: int) -> None:
    from evals.speed import random_prompt

    model(random_prompt(1, _PROFILE_PROMPT_TOKENS, vocab_size, device), use_cache=False)


def matmul_ops(model, device) -> dict[str, int]:
    """Return {operator: calls} for the matmul operators one profiled forward ran."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        _forward(model, torch.device(device), int(config.vocab_size))
    return {e.key: int(e.count) for e in sorted(prof.key_averages(), key=lambda e: e.key) if _is_matmul_op(e.key)}


def what_ran(model, device) -> dict[str, Any]:
    """Run one forward, then record each linear layer's storage and the matmul operators of a second.

    The first forward is not profiled: it is where decompression and repacking happen.
    """
    import torch

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _forward(model, device, int(config.vocab_size))
        record = linear_layers(model)
        ops = matmul_ops(model, device)
    finally:
        model.train(was_training)
    record["matmul_ops"] = ops
    record["low_precision_matmul_ops"] = sorted(op for op in ops if is_low_precision_op(op))
    return record


def judge_representative(what: dict[str, Any], *, expects_quantized: bool) -> tuple[bool, str | None]:
    """Return (representative, reason when not) from :func:`what_ran`'s record.

    The rule, in order:

    1. A scheme that stores quantized weights (``expects_quantized``) whose linear layers
       all hold dense float weights after the first forward ran decompressed: NOT
       representative (speed and memory are those of the dense model).
    2. Layers that declare quantized activations (W8A8, FP8 dynamic) while the profiled
       forward ran no low-precision matmul operator: NOT representative (the int8/fp8
       GEMM the scheme is for did not run; a float matmul stood in).
    3. Otherwise representative: the reference model, and quantized weights run by the
       library's own kernel (a weight-only scheme that dequantizes inside its kernel, as
       torchao's float8 weight-only does on a CPU, is that library's real cost here).

    Whether the device is the model's target device is judged by the sign-off, from
    ``device_kind``.
    """
    if expects_quantized and what["quantized_layers"] == 0:
        return False, (f"all {what['dense_float_layers']} linear layers held dense float weights after the first "
                       "forward: the checkpoint ran decompressed")
    if what.get("activation_quantized_layers") and not what.get("low_precision_matmul_ops"):
        ops = ", ".join(sorted(what.get("matmul_ops", {}))) or "none"
        return False, (f"{what['activation_quantized_layers']} layers declare quantized activations, but only "
                       f"float matmuls ran ({ops})")
    return True, None
