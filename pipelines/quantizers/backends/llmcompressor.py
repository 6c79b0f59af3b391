"""Shared plumbing for llm-compressor schemes, which write vLLM's compressed-tensors format.

transformers runs a compressed-tensors checkpoint by decompressing its weights
to dense on the first forward, except FP8 layers on a GPU with FP8 compute when
the load asks for ``use_optimized_inference``. Where the checkpoint runs
decompressed, quality numbers are real but speed and memory are not those vLLM
gets: each scheme says where with ``emulated_on(device)``.
"""

from __future__ import annotations

import logging

from pipelines.quantizers.base import QuantizeOutcome, QuantizeRequest, save_tokenizer

log = logging.getLogger(__name__)

FORMAT = "compressed-tensors"


def run(request: QuantizeRequest, recipe: list, *, scheme_label: str, emulated: bool) -> QuantizeOutcome:
    from llmcompressor import oneshot

    from pipelines.quantizers.loading import SOURCE_LOAD, load_dense

    model = load_dense(request.source, request.dtype, request.device, revision=request.revision,
                       n_gpus=request.n_gpus, trust_remote_code=request.trust_remote_code, stage=SOURCE_LOAD)
    kwargs = {}
    if request.calibration is not None:
        from datasets import Dataset

        windows = request.calibration.windows
        kwargs = dict(
            dataset=Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]}),
            num_calibration_samples=len(windows),
            max_seq_length=request.calibration.seq_len,
        )
    oneshot(model=model, recipe=recipe, **kwargs)
    model.save_pretrained(request.out_dir, save_compressed=True)
    save_tokenizer(request)
    notes = []
    if emulated:
        notes.append(f"{scheme_label} is decompressed to dense weights on {request.device}; "
                     "speed and memory are not those of vLLM's kernels")
    return QuantizeOutcome(backend=f"compressed-tensors {scheme_label}", format=FORMAT, notes=notes)


def load(checkpoint: str, device: str, dtype: str, n_gpus: int, *, trust_remote_code: bool = False,
         optimized_fp8: bool = False):
    """Reload a compressed-tensors checkpoint; ``optimized_fp8`` asks for transformers' FP8 kernels.

    transformers itself falls back to the decompressing route (with a warning)
    where the hardware has no FP8 compute, so asking is safe on any device.
    """
    from pipelines.quantizers.loading import load_checkpoint, torch_dtype

    kwargs = {"dtype": torch_dtype(dtype)}
    if optimized_fp8:
        from transformers import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(use_optimized_inference=True)
    return load_checkpoint(checkpoint, device, n_gpus, trust_remote_code=trust_remote_code, **kwargs)
