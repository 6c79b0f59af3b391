"""The registry of quantizers: one line per scheme, imported lazily.

Adding a scheme touches three places: its module here, one line below, and
its YAML in recipes/schemes/.
"""

from __future__ import annotations

import importlib

from pipelines.errors import QevalError
from pipelines.quantizers.base import Quantizer
from pipelines.recipes.resolve import unknown_name_message

REGISTRY: dict[str, str] = {
    "baseline": "pipelines.quantizers.baseline:BaselineQuantizer",
    "gptq": "pipelines.quantizers.gptq:GPTQQuantizer",
    "awq": "pipelines.quantizers.awq:AWQQuantizer",
    "int8": "pipelines.quantizers.int8:Int8Quantizer",
    "int8-w8a8": "pipelines.quantizers.int8_w8a8:Int8W8A8Quantizer",
    "int8-wo": "pipelines.quantizers.int8_wo:Int8WOQuantizer",
    "fp8": "pipelines.quantizers.fp8:FP8Quantizer",
    "fp8-dynamic": "pipelines.quantizers.fp8_dynamic:FP8DynamicQuantizer",
    "nf4": "pipelines.quantizers.nf4:NF4Quantizer",
    "prequantized": "pipelines.quantizers.prequantized:PrequantizedQuantizer",
    "gguf": "pipelines.quantizers.gguf:GGUFQuantizer",
    "gguf-imatrix": "pipelines.quantizers.gguf:GGUFImatrixQuantizer",
}


def get_quantizer(key: str) -> Quantizer:
    """Return an instance of the quantizer registered under ``key``."""
    if key not in REGISTRY:
        raise QevalError(unknown_name_message("quantizer", key, sorted(REGISTRY)))
    module_name, cls_name = REGISTRY[key].split(":")
    return getattr(importlib.import_module(module_name), cls_name)()
