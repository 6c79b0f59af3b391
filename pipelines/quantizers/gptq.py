"""GPTQ through gptqmodel: the GPTQ checkpoint format that transformers, vLLM and auto-gptq users load."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.errors import QevalError
from pipelines.quantizers.backends import gptqmodel as _gptqmodel
from pipelines.quantizers.base import (
    Params,
    QuantizeOutcome,
    Quantizer,
    QuantizeRequest,
    check_group_size,
)


class GPTQParams(Params):
    bits: Literal[4, 8] = 4
    group_size: int = Field(128, description="-1 for per-channel")
    desc_act: bool = Field(False, description="act-order: quantize columns by decreasing activation")
    sym: bool = True
    damp: float = Field(0.01, gt=0, lt=1, description="Hessian dampening, fraction of the mean diagonal")


class GPTQQuantizer(Quantizer):
    key = "gptq"
    library = "gptqmodel"
    ParamsModel = GPTQParams
    format = "gptq"
    calibrates = True
    # qeval plan: gptqmodel's per-layer loop is Python-bound at this size; its Hessians scale with tokens
    calibration_fixed_s = 48.0
    calibration_passes = 4.0
    prefill_cost = 1.1
    decode_cost = 1.3

    def parse_params(self, raw, where):
        if "bits" in raw and raw["bits"] not in (4, 8):
            raise QevalError(f"{where}: gptq supports bits 4 or 8, not {raw['bits']}. Set bits: 4 or bits: 8.")
        return super().parse_params(raw, where)

    def check_model(self, params: GPTQParams, layer_shapes) -> None:
        check_group_size(params.group_size, layer_shapes, self.key)

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        _gptqmodel.prepare_environment()
        from gptqmodel import GPTQConfig

        p: GPTQParams = request.params
        config = GPTQConfig(
            bits=p.bits, group_size=p.group_size, desc_act=p.desc_act, sym=p.sym, damp_percent=p.damp,
            dynamic=_gptqmodel.skip_dynamic(request.ignore),
        )
        return _gptqmodel.run(request, config, "AUTO", self.format)

    def load(self, checkpoint, device, dtype, n_gpus=1, *, trust_remote_code=False):
        _gptqmodel.prepare_environment()
        return super().load(checkpoint, device, dtype, n_gpus, trust_remote_code=trust_remote_code)
