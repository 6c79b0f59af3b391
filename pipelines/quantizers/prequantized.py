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


def read_quant_config(source: str, revision: str | None = None, *, trust_remote_code: bool = False) -> dict:
    path = Path(source)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise QevalError(f"prequantized checkpoint {source}: no config.json; not a transformers checkpoint")
        config = json.loads(config_file.read_text())
    else:
        from pipelines.quantizers.loading import load_config

        config = load_config(source, revision, trust_remote_code=trust_remote_code).to_dict()
    return config.get("quantization_config") or {}


def detect_format(source: str, revision: str | None = None, *, trust_remote_code: bool = False) -> str:
    """Return the checkpoint's quantization format, or raise naming the supported ones."""
    qcfg = read_quant_config(source, revision, trust_remote_code=trust_remote_code)
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
    format = "as published"
    ParamsModel = PrequantizedParams
    prequantized = True
    # No base model in the same coordinates to compare layers with (it may not even be the same model).
    measures_layer_errors = False

    def emulated_on(self, device: str, checkpoint_format: str | None = None) -> bool:
        # transformers decompresses compressed-tensors checkpoints to dense on their
        # first forward (FP8 kernels are not requested for checkpoints of unknown scheme).
        return checkpoint_format == "compressed-tensors"

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        fmt = detect_format(request.source, request.revision, trust_remote_code=request.trust_remote_code)
        return QuantizeOutcome(backend=f"transformers ({fmt})", format=fmt)

    def load(self, checkpoint, device, dtype, n_gpus=1, *, trust_remote_code=False):
        from pipelines.quantizers.backends import gptqmodel as _gptqmodel
        from pipelines.quantizers.loading import load_checkpoint

        _gptqmodel.prepare_environment()  # GPTQ and AWQ checkpoints load through gptqmodel's kernels
        return load_checkpoint(checkpoint, device, n_gpus, trust_remote_code=trust_remote_code)
