"""NF4 (QLoRA's 4-bit NormalFloat) through bitsandbytes, with optional double quantization."""

from __future__ import annotations

from typing import Literal

from pipelines.quantizers.backends.bnb import BitsAndBytesQuantizer
from pipelines.quantizers.base import Params, QuantizeRequest


class NF4Params(Params):
    double_quant: bool = True
    # auto: the sweep's compute dtype (pipelines.compute), like every other scheme
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class NF4Quantizer(BitsAndBytesQuantizer):
    key = "nf4"
    # qeval plan: bitsandbytes' 4-bit CPU kernel, measured against dense layers
    prefill_cost = 0.5
    decode_cost = 1.1
    bits = 4
    ParamsModel = NF4Params
    kernel = "Linear4bit"

    def bnb_config(self, request: QuantizeRequest):
        from transformers import BitsAndBytesConfig

        from pipelines.quantizers.loading import torch_dtype

        p: NF4Params = request.params
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=p.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(request.dtype if p.compute_dtype == "auto" else p.compute_dtype),
            llm_int8_skip_modules=list(request.ignore) or None,
        )
