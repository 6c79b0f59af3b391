"""LLM.int8 through bitsandbytes: int8 weights with fp16 outlier columns above a threshold."""

from __future__ import annotations

from pydantic import Field

from pipelines.quantizers.backends import bnb as _bnb
from pipelines.quantizers.base import Params, QuantizeOutcome, Quantizer, QuantizeRequest


class Int8Params(Params):
    threshold: float = Field(6.0, ge=0, description="outlier threshold of LLM.int8 (paper: 6.0)")


class Int8Quantizer(Quantizer):
    key = "int8"
    library = "bitsandbytes"
    format = "bitsandbytes"
    bits = 8
    ParamsModel = Int8Params
    install_hint = "pip install bitsandbytes==0.50.2"

    def check_environment(self, device, params) -> None:
        super().check_environment(device, params)
        _bnb.check_backend(device)

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_threshold=request.params.threshold,
            llm_int8_skip_modules=list(request.ignore) or None,
        )
        _bnb.quantize_and_save(request, config)
        return QuantizeOutcome(backend="bitsandbytes Linear8bitLt", format=self.format)

    def load(self, checkpoint, device, dtype, n_gpus=1, *, trust_remote_code=False):
        return _bnb.load(checkpoint, device, n_gpus, trust_remote_code)
