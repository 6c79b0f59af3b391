"""Shared plumbing for bitsandbytes schemes (LLM.int8 and NF4).

bitsandbytes quantizes while transformers loads the weights. A forward pass
before ``save_pretrained`` corrupts 4-bit weights on CPU (bitsandbytes issue
#2078), so the checkpoint is saved straight after loading, and every
measurement reloads it from disk.
"""

from __future__ import annotations

from pipelines.errors import UnsupportedHere
from pipelines.quantizers.base import QuantizeOutcome, Quantizer, QuantizeRequest, save_tokenizer


def check_backend(device: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a broken native library raises more than ImportError
        raise UnsupportedHere(
            f"bitsandbytes cannot load here ({exc}). It needs its CPU or CUDA backend: "
            "pip install bitsandbytes==0.50.2"
        ) from exc


def quantize_and_save(request: QuantizeRequest, bnb_config) -> None:
    from pipelines.quantizers.loading import (
        SOURCE_LOAD,
        count_load,
        device_map_for,
        from_pretrained,
        torch_dtype,
    )

    count_load(SOURCE_LOAD)
    model = from_pretrained(
        request.source, revision=request.revision, dtype=torch_dtype(request.dtype),
        quantization_config=bnb_config, device_map=device_map_for(request.device, request.n_gpus),
        trust_remote_code=request.trust_remote_code,
    )
    model.save_pretrained(request.out_dir)  # no forward pass before this line: see module docstring
    save_tokenizer(request)


class BitsAndBytesQuantizer(Quantizer):
    """Base of the bitsandbytes schemes: a BitsAndBytesConfig applied while transformers loads."""

    library = "bitsandbytes"
    format = "bitsandbytes"
    install_hint = "pip install bitsandbytes==0.50.2"
    # The checkpoint's config sets the compute dtype; no dtype is forced on load.
    loads_in_saved_dtype = True
    kernel = ""  # the module that runs the checkpoint, for quantize.json's backend

    def bnb_config(self, request: QuantizeRequest):
        raise NotImplementedError

    def check_environment(self, device, params) -> None:
        super().check_environment(device, params)
        check_backend(device)

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        quantize_and_save(request, self.bnb_config(request))
        return QuantizeOutcome(backend=f"bitsandbytes {self.kernel}", format=self.format)
