"""AWQ through gptqmodel (the maintained successor of AutoAWQ), saved in the AWQ GEMM format."""

from __future__ import annotations

from typing import Literal

from pipelines.errors import QevalError
from pipelines.quantizers.backends import gptqmodel as _gptqmodel
from pipelines.quantizers.base import (
    Params,
    QuantizeOutcome,
    Quantizer,
    QuantizeRequest,
    check_group_size,
)


class AWQParams(Params):
    bits: Literal[4] = 4
    group_size: int = 128
    zero_point: bool = True


class AWQQuantizer(Quantizer):
    key = "awq"
    library = "gptqmodel"
    ParamsModel = AWQParams
    format = "awq-gemm"
    calibrates = True
    # qeval plan: the scale and clip search is Python-bound at this size (about 2.5 s a layer)
    calibration_fixed_s = 75.0
    calibration_passes = 20.0
    prefill_cost = 0.95
    folds_input_scales = True
    # gptqmodel 7.6's AwqTorchLinear, which its AWQ quantize packs into, raises NotImplementedError
    # for float32. The saved checkpoint loads in float32 (TorchAtenAwqLinear, torch's int4 CPU kernel).
    quantize_dtypes = ("bfloat16", "float16")
    quantize_dtypes_reason = "gptqmodel's AWQ packing kernel (AwqTorchLinear) supports only float16 and bfloat16"

    def parse_params(self, raw, where):
        if "bits" in raw and raw["bits"] != 4:
            raise QevalError(f"{where}: awq supports bits 4 only, not {raw['bits']}. Use gptq for 8-bit.")
        return super().parse_params(raw, where)

    def check_model(self, params: AWQParams, layer_shapes) -> None:
        check_group_size(params.group_size, layer_shapes, self.key)

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        _gptqmodel.prepare_environment()
        from gptqmodel import AWQConfig

        p: AWQParams = request.params
        config = AWQConfig(
            bits=p.bits, group_size=p.group_size, sym=not p.zero_point,
            dynamic=_gptqmodel.skip_dynamic(request.ignore),
        )
        # gptqmodel's default AWQ backend needs CUDA; the torch backend runs anywhere.
        backend = "AUTO" if request.device == "cuda" else "AWQ_TORCH"
        return _gptqmodel.run(request, config, backend, self.format)

    def load(self, checkpoint, device, dtype, n_gpus=1, *, trust_remote_code=False):
        _gptqmodel.prepare_environment()
        return super().load(checkpoint, device, dtype, n_gpus, trust_remote_code=trust_remote_code)
