"""Shared plumbing for torchao schemes: quantize while transformers loads, save, reload.

torchao swaps each linear weight for a tensor subclass (Float8Tensor, Int8Tensor)
during ``from_pretrained``; ``save_pretrained`` writes those tensors to
safetensors, and a reload rebuilds them from the checkpoint's TorchAoConfig.
"""

from __future__ import annotations

from pipelines.quantizers.base import QuantizeOutcome, Quantizer, QuantizeRequest, save_tokenizer


def quantize_and_save(request: QuantizeRequest, torchao_config) -> None:
    """Load the base model through transformers' TorchAoConfig and save the quantized checkpoint."""
    from transformers import TorchAoConfig

    from pipelines.quantizers.loading import (
        SOURCE_LOAD,
        count_load,
        device_map_for,
        from_pretrained,
        torch_dtype,
    )

    config = TorchAoConfig(torchao_config, modules_to_not_convert=list(request.ignore) or None)
    count_load(SOURCE_LOAD)
    model = from_pretrained(
        request.source, revision=request.revision, dtype=torch_dtype(request.dtype),
        quantization_config=config, device_map=device_map_for(request.device, request.n_gpus),
        trust_remote_code=request.trust_remote_code,
    )
    model.save_pretrained(request.out_dir)
    save_tokenizer(request)


class TorchAOQuantizer(Quantizer):
    """Base of the torchao schemes: one torchao config applied while transformers loads."""

    library = "torchao"
    format = "torchao"
    install_hint = "pip install torchao==0.18.0"
    # The activation dtype is the one saved with the checkpoint (the recipe dtype at quantize time).
    loads_in_saved_dtype = True
    kernel = ""  # what runs the checkpoint, for quantize.json's backend

    def torchao_config(self, request: QuantizeRequest):
        raise NotImplementedError

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        quantize_and_save(request, self.torchao_config(request))
        return QuantizeOutcome(backend=f"torchao {self.kernel}", format=self.format)
