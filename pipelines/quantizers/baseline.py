"""The unquantized model in its recipe dtype: the reference every scheme is judged against."""

from __future__ import annotations

from pipelines.quantizers.base import QuantizeOutcome, Quantizer, QuantizeRequest, save_tokenizer


class BaselineQuantizer(Quantizer):
    key = "baseline"
    library = "transformers"
    format = "dense"
    is_reference = True
    measures_layer_errors = False  # it is the reference the others are measured against
    stores_compressed = False

    def weight_bits(self, params) -> int | None:
        return None  # the recipe dtype's width; not a quantized format

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from pipelines.quantizers.loading import SOURCE_LOAD, load_dense

        # Saved in the storage precision (the reference); the stages load it in the compute dtype.
        model = load_dense(request.source, request.storage_dtype or request.dtype, "cpu", revision=request.revision,
                           trust_remote_code=request.trust_remote_code, stage=SOURCE_LOAD)
        model.save_pretrained(request.out_dir)
        save_tokenizer(request)
        return QuantizeOutcome(backend="dense", format=self.format)
