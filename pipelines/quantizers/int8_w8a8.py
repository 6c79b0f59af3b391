"""INT8 weights and activations (W8A8) through llm-compressor: SmoothQuant, then GPTQ.

The compressed-tensors checkpoint is the one vLLM serves with int8 kernels.
transformers has no int8 kernel for it: it decompresses the weights to dense
on the first forward on every device, so its costs here are always emulated.
"""

from __future__ import annotations

from pydantic import Field

from pipelines.quantizers.backends import llmcompressor as _llmcompressor
from pipelines.quantizers.base import Params, QuantizeOutcome, Quantizer, QuantizeRequest


class W8A8Params(Params):
    smoothing_strength: float = Field(0.8, gt=0, lt=1, description="SmoothQuant alpha")
    damp: float = Field(0.01, gt=0, lt=1)


class Int8W8A8Quantizer(Quantizer):
    key = "int8-w8a8"
    library = "llmcompressor"
    format = _llmcompressor.FORMAT
    bits = 8
    ParamsModel = W8A8Params
    calibrates = True
    folds_input_scales = True
    install_hint = "pip install llmcompressor==0.14.0.1"

    def emulated_on(self, device: str, checkpoint_format: str | None = None) -> bool:
        return True  # see the module docstring: no int8 GEMM runs under transformers

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from llmcompressor.modifiers.gptq import GPTQModifier
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        p: W8A8Params = request.params
        ignore = sorted(set(request.ignore) | {"lm_head"})
        recipe = [
            SmoothQuantModifier(smoothing_strength=p.smoothing_strength),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=ignore, dampening_frac=p.damp),
        ]
        return _llmcompressor.run(request, recipe, scheme_label="W8A8", emulated=self.emulated_on(request.device))

    def load(self, checkpoint, device, dtype, n_gpus=1, *, trust_remote_code=False):
        return _llmcompressor.load(checkpoint, device, dtype, n_gpus, trust_remote_code=trust_remote_code)
