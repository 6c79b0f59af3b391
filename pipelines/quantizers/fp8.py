"""FP8 (e4m3) weight-only through torchao: runs on any CPU or GPU, saved through transformers."""

from __future__ import annotations

from pipelines.quantizers.backends import torchao as _torchao
from pipelines.quantizers.base import Params, QuantizeOutcome, Quantizer, QuantizeRequest


class FP8Params(Params):
    """Float8WeightOnlyConfig has no knobs worth a recipe field: per-row scales, e4m3."""


class FP8Quantizer(Quantizer):
    key = "fp8"
    library = "torchao"
    format = "torchao"
    bits = 8
    ParamsModel = FP8Params
    install_hint = "pip install torchao==0.18.0"

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from torchao.quantization import Float8WeightOnlyConfig

        _torchao.quantize_and_save(request, Float8WeightOnlyConfig())
        # Weight-only: activations stay in the model dtype, and the matmul
        # dequantizes the fp8 weight, so no FP8 compute is needed on any device.
        return QuantizeOutcome(backend="torchao Float8Tensor (weight-only, dequantize + matmul)", format=self.format)

    def load(self, checkpoint, device, dtype, n_gpus=1, *, trust_remote_code=False):
        return _torchao.load(checkpoint, device, n_gpus, trust_remote_code)
