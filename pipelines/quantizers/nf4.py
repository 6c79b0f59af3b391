"""NF4 (QLoRA's 4-bit NormalFloat) through bitsandbytes, with optional double quantization."""

from __future__ import annotations

from typing import Literal

from pipelines.quantizers.backends import bnb as _bnb
from pipelines.quantizers.base import Params, QuantizeOutcome, Quantizer, QuantizeRequest


class NF4Params(Params):
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"


class NF4Quantizer(Quantizer):
    key = "nf4"
    library = "bitsandbytes"
    format = "bitsandbytes"
    bits = 4
    ParamsModel = NF4Params
    install_hint = "pip install bitsandbytes==0.50.2"

    def check_environment(self, device, params) -> None:
        super().check_environment(device, params)
        _bnb.check_backend(device)

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from transformers import BitsAndBytesConfig

        from pipelines.quantizers.loading import torch_dtype

        p: NF4Params = request.params
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=p.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(p.compute_dtype),
            llm_int8_skip_modules=list(request.ignore) or None,
        )
        _bnb.quantize_and_save(request, config)
        return QuantizeOutcome(backend="bitsandbytes Linear4bit", format=self.format)

    def load(self, checkpoint, device, dtype, n_gpus=1, *, trust_remote_code=False):
        return _bnb.load(checkpoint, device, n_gpus, trust_remote_code)
