"""FP8 weights with dynamic per-token FP8 activations through llm-compressor (FP8_DYNAMIC).

The compressed-tensors checkpoint is for vLLM on GPUs with FP8 compute
(compute capability 8.9+: Ada, Hopper). Anywhere else it runs decompressed,
and the emulated variant to use for costs is torchao's weight-only ``fp8``.
"""

from __future__ import annotations

from pipelines.quantizers.backends import llmcompressor as _llmcompressor
from pipelines.quantizers.base import Params, QuantizeOutcome, Quantizer, QuantizeRequest


class FP8DynamicParams(Params):
    """FP8_DYNAMIC is a fixed preset: per-channel weight scales, per-token activation scales."""


def has_fp8_compute() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability(0) >= (8, 9)


class FP8DynamicQuantizer(Quantizer):
    key = "fp8-dynamic"
    library = "llmcompressor"
    ParamsModel = FP8DynamicParams
    install_hint = "pip install llmcompressor==0.14.0.1"

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        ignore = sorted(set(request.ignore) | {"lm_head"})
        recipe = [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)]
        emulated = not has_fp8_compute()
        outcome = _llmcompressor.run(request, recipe, scheme_label="FP8_DYNAMIC", emulated=emulated)
        if emulated and request.device == "cuda":
            outcome.notes.append(
                "this GPU has compute capability below 8.9 and no FP8 compute: FP8_DYNAMIC runs emulated; "
                "for representative FP8 costs on it use the weight-only variant 'fp8' (torchao)"
            )
        return outcome
