"""The unquantized model in its recipe dtype: the reference every scheme is judged against."""

from __future__ import annotations

from pipelines.quantizers.base import QuantizeOutcome, Quantizer, QuantizeRequest, save_tokenizer


class BaselineQuantizer(Quantizer):
    key = "baseline"
    library = "transformers"
    stores_compressed = False

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from pipelines.quantizers.loading import SOURCE_LOAD, load_dense

        model = load_dense(request.source, request.dtype, "cpu", revision=request.revision, stage=SOURCE_LOAD)
        model.save_pretrained(request.out_dir)
        save_tokenizer(request.source, request.out_dir, request.revision)
        return QuantizeOutcome(backend="dense", format="dense")
