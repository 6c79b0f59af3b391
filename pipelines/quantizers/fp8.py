"""FP8 (e4m3) weight-only through torchao: runs on any CPU or GPU, saved through transformers."""

from __future__ import annotations

from pipelines.quantizers.backends.torchao import TorchAOQuantizer
from pipelines.quantizers.base import Params, QuantizeRequest


class FP8Params(Params):
    """Float8WeightOnlyConfig has no knobs worth a recipe field: per-row scales, e4m3."""


class FP8Quantizer(TorchAOQuantizer):
    key = "fp8"
    # qeval plan: emulated FP8 matmuls on a CPU, measured against dense layers
    decode_cost = 4.5
    bits = 8
    ParamsModel = FP8Params
    kernel = "Float8Tensor (weight-only, dequantize + matmul)"

    def torchao_config(self, request: QuantizeRequest):
        from torchao.quantization import Float8WeightOnlyConfig

        # Weight-only: activations stay in the model dtype, and the matmul
        # dequantizes the fp8 weight, so no FP8 compute is needed on any device.
        return Float8WeightOnlyConfig()
