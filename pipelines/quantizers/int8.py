"""LLM.int8 through bitsandbytes: int8 weights with fp16 outlier columns above a threshold."""

from __future__ import annotations

from pydantic import Field

from pipelines.quantizers.backends.bnb import BitsAndBytesQuantizer
from pipelines.quantizers.base import Params, QuantizeRequest


class Int8Params(Params):
    threshold: float = Field(6.0, ge=0, description="outlier threshold of LLM.int8 (paper: 6.0)")


class Int8Quantizer(BitsAndBytesQuantizer):
    key = "int8"
    # qeval plan: LLM.int8's outlier split and casts, measured against dense layers
    prefill_cost = 1.1
    decode_cost = 2.5
    bits = 8
    ParamsModel = Int8Params
    kernel = "Linear8bitLt"

    def bnb_config(self, request: QuantizeRequest):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_threshold=request.params.threshold,
            llm_int8_skip_modules=list(request.ignore) or None,
        )
