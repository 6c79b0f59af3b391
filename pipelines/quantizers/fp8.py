"""FP8 (e4m3) weight-only through torchao: runs on any CPU or GPU, saved through transformers."""

from __future__ import annotations

from pipelines.quantizers.base import (
    Params,
    QuantizeOutcome,
    Quantizer,
    QuantizeRequest,
    save_tokenizer,
)


class FP8Params(Params):
    """Float8WeightOnlyConfig has no knobs worth a recipe field: per-row scales, e4m3."""


class FP8Quantizer(Quantizer):
    key = "fp8"
    library = "torchao"
    ParamsModel = FP8Params
    install_hint = "pip install torchao==0.18.0"

    def quantize(self, request: QuantizeRequest) -> QuantizeOutcome:
        from torchao.quantization import Float8WeightOnlyConfig
        from transformers import AutoModelForCausalLM, TorchAoConfig

        from pipelines.quantizers.loading import (
            SOURCE_LOAD,
            count_load,
            device_map_for,
            torch_dtype,
        )

        config = TorchAoConfig(Float8WeightOnlyConfig(), modules_to_not_convert=list(request.ignore) or None)
        count_load(SOURCE_LOAD)
        model = AutoModelForCausalLM.from_pretrained(
            request.source, revision=request.revision, dtype=torch_dtype(request.dtype),
            quantization_config=config, device_map=device_map_for(request.device, request.n_gpus),
        )
        model.save_pretrained(request.out_dir)
        save_tokenizer(request.source, request.out_dir, request.revision)
        # Weight-only: activations stay in the model dtype, and the matmul
        # dequantizes the fp8 weight, so no FP8 compute is needed on any device.
        return QuantizeOutcome(backend="torchao Float8Tensor (weight-only, dequantize + matmul)", format="torchao")

    def load(self, checkpoint, device, dtype, n_gpus=1):
        from transformers import AutoModelForCausalLM

        from pipelines.quantizers.loading import device_map_for

        return AutoModelForCausalLM.from_pretrained(checkpoint, device_map=device_map_for(device, n_gpus)).eval()
