"""Round-to-nearest int8 weight-only through torchao (Int8WeightOnlyConfig): no calibration.

Each linear weight becomes torchao's Int8Tensor with one scale per output row;
activations stay in the model dtype. Runs on any CPU or GPU, and is the
simplest 8-bit point to compare calibrated schemes against.
"""

from __future__ import annotations

from pipelines.quantizers.backends import torchao as _torchao
from pipelines.quantizers.base import Params, QuantizeOutcome, Quantizer, QuantizeRequest


class Int8WOParams(Params):
    """Int8WeightOnlyConfig's defaults: symmetric, per output channel."""


class Int8WOQuantizer(Quantizer):
    key = "int8-wo"
    library = "torchao"
    format = "torchao"
    bits = 8
    ParamsModel = Int8WOParams
    install_hint = "pip install torchao==0.18.0"

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from torchao.quantization import Int8WeightOnlyConfig

        _torchao.quantize_and_save(request, Int8WeightOnlyConfig())
        return QuantizeOutcome(backend="torchao Int8Tensor (weight-only)", format=self.format)

    def load(self, checkpoint, device, dtype, n_gpus=1, *, trust_remote_code=False):
        return _torchao.load(checkpoint, device, n_gpus, trust_remote_code)
