"""Evaluate a published quantized checkpoint (Hub id or path) without quantizing it again.

Recognised formats, from ``quantization_config.quant_method`` in config.json:
GPTQ (auto-gptq / gptqmodel), AWQ (AutoAWQ / gptqmodel), compressed-tensors
(llm-compressor) and bitsandbytes. All of them load through transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.errors import QevalError
from pipelines.quantizers.base import Params, QuantizeOutcome, Quantizer, QuantizeRequest

FORMATS = {
    "gptq": "gptq",
    "awq": "awq",
    "compressed-tensors": "compressed-tensors",
    "bitsandbytes": "bitsandbytes",
    "torchao": "torchao",
}


class PrequantizedParams(Params):
    """No parameters: the checkpoint carries its own quantization config."""


def read_quant_config(source: str, revision: str | None = None) -> dict:
    path = Path(source)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise QevalError(f"prequantized checkpoint {source}: no config.json; not a transformers checkpoint")
        config = json.loads(config_file.read_text())
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source, revision=revision).to_dict()
    return config.get("quantization_config") or {}


def detect_format(source: str, revision: str | None = None) -> str:
    """Return the checkpoint's quantization format, or raise naming the supported ones."""
    qcfg = read_quant_config(source, revision)
    method = str(qcfg.get("quant_method", "")).lower()
    if method not in FORMATS:
        found = method or "no quantization_config"
        raise QevalError(
            f"prequantized checkpoint {source}: format not recognised ({found}). Supported: "
            f"{', '.join(FORMATS)}. For an unquantized model use it as MODEL with the baseline scheme."
        )
    return FORMATS[method]


class PrequantizedQuantizer(Quantizer):
    key = "prequantized"
    library = "transformers"
    ParamsModel = PrequantizedParams

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        fmt = detect_format(request.source, request.revision)
        emulated = fmt == "compressed-tensors" and request.device != "cuda"
        return QuantizeOutcome(backend=f"transformers ({fmt})", format=fmt, emulated=emulated)

    def load(self, checkpoint, device, dtype, n_gpus=1):
        from pipelines.quantizers.backends import gptqmodel as _gptqmodel

        _gptqmodel.prepare_environment()
        from transformers import AutoModelForCausalLM

        from pipelines.quantizers.loading import device_map_for

        return AutoModelForCausalLM.from_pretrained(checkpoint, device_map=device_map_for(device, n_gpus)).eval()
