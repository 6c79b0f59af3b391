"""FP8 weights with dynamic per-token FP8 activations through llm-compressor (FP8_DYNAMIC).

The compressed-tensors checkpoint is for vLLM on GPUs with FP8 compute
(compute capability 8.9+: Ada, Hopper). There, transformers runs it with FP8
kernels when the load asks for them (it does, below). Anywhere else it runs
decompressed, and the variant to use for costs is torchao's weight-only ``fp8``.
"""

from __future__ import annotations

from pipelines.quantizers.backends import llmcompressor as _llmcompressor
from pipelines.quantizers.base import Params, QuantizeOutcome, Quantizer, QuantizeRequest

FP8_COMPUTE_CAPABILITY = (8, 9)


class FP8DynamicParams(Params):
    """FP8_DYNAMIC is a fixed preset: per-channel weight scales, per-token activation scales."""


def has_fp8_compute(device: str) -> bool:
    """True where ``device`` (the one the stage runs on) is a CUDA GPU with FP8 matmuls."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(torch.device(device)) >= FP8_COMPUTE_CAPABILITY


class FP8DynamicQuantizer(Quantizer):
    key = "fp8-dynamic"
    library = "llmcompressor"
    format = _llmcompressor.FORMAT
    bits = 8
    ParamsModel = FP8DynamicParams
    install_hint = "pip install llmcompressor==0.14.0.1"

    def emulated_on(self, device: str, checkpoint_format: str | None = None) -> bool:
        return not has_fp8_compute(device)

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        ignore = sorted(set(request.ignore) | {"lm_head"})
        recipe = [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)]
        emulated = self.emulated_on(request.device)
        outcome = _llmcompressor.run(request, recipe, scheme_label="FP8_DYNAMIC", emulated=emulated)
        if emulated and request.device.startswith("cuda"):
            outcome.notes.append(
                "this GPU has compute capability below 8.9 and no FP8 compute: FP8_DYNAMIC runs emulated; "
                "for representative FP8 costs on it use the weight-only variant 'fp8' (torchao)"
            )
        return outcome

    def load(self, checkpoint, device, dtype, n_gpus=1, *, trust_remote_code=False):
        return _llmcompressor.load(checkpoint, device, dtype, n_gpus, trust_remote_code=trust_remote_code,
                                   optimized_fp8=has_fp8_compute(device))
