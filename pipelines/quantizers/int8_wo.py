"""Round-to-nearest int8 weight-only through torchao (Int8WeightOnlyConfig): no calibration.

Each linear weight becomes torchao's Int8Tensor with one scale per output row;
activations stay in the model dtype. Runs on any CPU or GPU, and is the
simplest 8-bit point to compare calibrated schemes against.
"""

from __future__ import annotations

from pipelines.quantizers.backends.torchao import TorchAOQuantizer
from pipelines.quantizers.base import Params, QuantizeRequest


class Int8WOParams(Params):
    """Int8WeightOnlyConfig's defaults: symmetric, per output channel."""


class Int8WOQuantizer(TorchAOQuantizer):
    key = "int8-wo"
    bits = 8
    ParamsModel = Int8WOParams
    kernel = "Int8Tensor (weight-only)"

    def torchao_config(self, request: QuantizeRequest):
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()
