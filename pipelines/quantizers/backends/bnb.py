"""Shared plumbing for bitsandbytes schemes (LLM.int8 and NF4).

bitsandbytes quantizes while transformers loads the weights. A forward pass
before ``save_pretrained`` corrupts 4-bit weights on CPU (bitsandbytes issue
#2078), so the checkpoint is saved straight after loading, and every
measurement reloads it from disk.
"""

from __future__ import annotations

from pipelines.errors import UnsupportedHere
from pipelines.quantizers.base import QuantizeRequest, save_tokenizer


def check_backend(device: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a broken native library raises more than ImportError
        raise UnsupportedHere(
            f"bitsandbytes cannot load here ({exc}). It needs its CPU or CUDA backend: "
            "pip install bitsandbytes==0.50.2"
        ) from exc


def quantize_and_save(request: QuantizeRequest, bnb_config) -> None:
    from transformers import AutoModelForCausalLM

    from pipelines.quantizers.loading import SOURCE_LOAD, count_load, device_map_for, torch_dtype

    count_load(SOURCE_LOAD)
    model = AutoModelForCausalLM.from_pretrained(
        request.source, revision=request.revision, dtype=torch_dtype(request.dtype),
        quantization_config=bnb_config, device_map=device_map_for(request.device, request.n_gpus),
    )
    model.save_pretrained(request.out_dir)  # no forward pass before this line: see module docstring
    save_tokenizer(request.source, request.out_dir, request.revision)


def load(checkpoint: str, device: str, n_gpus: int):
    from transformers import AutoModelForCausalLM

    from pipelines.quantizers.loading import device_map_for

    return AutoModelForCausalLM.from_pretrained(checkpoint, device_map=device_map_for(device, n_gpus)).eval()
