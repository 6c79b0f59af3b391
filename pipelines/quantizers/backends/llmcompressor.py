"""Shared plumbing for llm-compressor schemes, which write vLLM's compressed-tensors format.

On a CPU (or a GPU without the needed compute) transformers decompresses a
compressed-tensors checkpoint to dense weights on load, so quality numbers
are real but speed and memory are not those vLLM gets: such runs are marked
``emulated`` and their cost numbers as not representative.
"""

from __future__ import annotations

import logging

from pipelines.quantizers.base import QuantizeOutcome, QuantizeRequest, save_tokenizer

log = logging.getLogger(__name__)


def run(request: QuantizeRequest, recipe: list, *, scheme_label: str, emulated: bool) -> QuantizeOutcome:
    from llmcompressor import oneshot

    from pipelines.quantizers.loading import SOURCE_LOAD, load_dense

    model = load_dense(request.source, request.dtype, request.device, revision=request.revision,
                       n_gpus=request.n_gpus, stage=SOURCE_LOAD)
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
    save_tokenizer(request.source, request.out_dir, request.revision)
    notes = []
    if emulated:
        notes.append(f"{scheme_label} is decompressed to dense weights on {request.device}; "
                     "speed and memory are not those of vLLM's kernels")
    return QuantizeOutcome(backend=f"compressed-tensors {scheme_label}", format="compressed-tensors",
                           emulated=emulated, notes=notes)


