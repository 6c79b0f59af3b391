"""Load tokenizers and dense checkpoints, and count model loads per stage."""

from __future__ import annotations

from typing import Any

from pipelines.errors import QevalError

# Count of model loads per stage, printed at the end of a sweep: the smoke sweep
# should load a model at most once per scheme per stage.
LOAD_COUNTS: dict[str, int] = {}
# The quantize stage also reads the base model: once to quantize it (source) and
# once as the reference of the per-layer error report; counted apart from the
# load of the checkpoint under test.
SOURCE_LOAD = "quantize:source"
REFERENCE_LOAD = "quantize:reference"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise QevalError("the suite asks for device 'cuda' but no CUDA device is visible; use device: auto or cpu")
    return device


def device_map_for(device: str, n_gpus: int = 1) -> Any:
    """``device_map`` for from_pretrained: one device, or 'auto' to spread a large model over GPUs."""
    if device == "cuda" and n_gpus > 1:
        return "auto"
    return {"": 0} if device == "cuda" else "cpu"


def count_load(stage: str) -> None:
    LOAD_COUNTS[stage] = LOAD_COUNTS.get(stage, 0) + 1


def from_pretrained(source: str, **kwargs: Any):
    """The one call through which qeval loads a causal LM with transformers.

    Every load of a model (base, reference, quantize-on-load, checkpoint reload)
    goes through here, so that recipe fields such as ``trust_remote_code`` reach
    transformers on every path; a test wraps transformers' from_pretrained to check it.
    """
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def load_tokenizer(source: str, revision: str | None = None, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_config(source: str, revision: str | None = None, *, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)


def load_dense(source: str, dtype: str, device: str, *, revision: str | None = None,
               n_gpus: int = 1, trust_remote_code: bool = False, stage: str = "load"):
    """Load an unquantized checkpoint in ``dtype`` on ``device`` (eval mode)."""
    count_load(stage)
    model = from_pretrained(
        source, revision=revision, dtype=torch_dtype(dtype), device_map=device_map_for(device, n_gpus),
        trust_remote_code=trust_remote_code,
    )
    return model.eval()


def load_checkpoint(checkpoint: str, device: str, n_gpus: int = 1, *, trust_remote_code: bool = False,
                    **kwargs: Any):
    """Reload a quantized checkpoint qeval wrote (its config carries the quantization settings)."""
    model = from_pretrained(checkpoint, device_map=device_map_for(device, n_gpus),
                            trust_remote_code=trust_remote_code, **kwargs)
    return model.eval()
