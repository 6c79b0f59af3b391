"""Resolve a model name (recipe alias, Hub id or local directory) and load checkpoints."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from pipelines import default_model
from pipelines.config import ModelRecipe, available, load_recipe, unknown_name_message, validate
from pipelines.errors import QevalError

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Count of model loads per stage, printed at the end of a sweep: the smoke sweep
# should load a model at most once per scheme per stage.
LOAD_COUNTS: dict[str, int] = {}
# The quantize stage also reads the base model: once to quantize it (source) and
# once as the reference of the per-layer error report; counted apart from the
# load of the checkpoint under test.
SOURCE_LOAD = "quantize:source"
REFERENCE_LOAD = "quantize:reference"


def resolve_model(name: str) -> ModelRecipe:
    """Return the recipe for an alias, a local checkpoint directory or a Hub id.

    Raises:
        QevalError: the name is none of these; the message lists the aliases.
    """
    aliases = available("models")
    if name in aliases:
        return validate(ModelRecipe, load_recipe("models", name), f"recipes/models/{name}.yaml")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise QevalError(f"{path} is a directory but has no config.json: not a transformers checkpoint")
        return ModelRecipe(name=_safe_name(path.resolve().name), source=str(path.resolve()),
                           dtype=_config_dtype(path), default_suite="smoke")
    if HUB_ID.match(name) and not name.startswith((".", "/")):
        return ModelRecipe(name=_safe_name(name.replace("/", "--")), source=name)
    raise QevalError(
        unknown_name_message("model", name, aliases)
        + ". A model can also be a Hub id (org/name) or a local checkpoint directory."
    )


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name)


def _config_dtype(path: Path) -> str:
    cfg = json.loads((path / "config.json").read_text())
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "bfloat16"


def source_path(recipe: ModelRecipe) -> str:
    """Return what ``from_pretrained`` should read: a local directory or a Hub id."""
    if recipe.source.startswith(EMBEDDED_PREFIX):
        which = recipe.source[len(EMBEDDED_PREFIX):]
        if which != "smollm2-135m":
            raise QevalError(f"unknown embedded model {which!r}; the embedded model is smollm2-135m")
        if not default_model.is_prepared():
            log.info("preparing the embedded default model (first use)")
            default_model.prepare()
        return str(default_model.checkpoint_dir())
    return recipe.source


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


def load_tokenizer(source: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_dense(source: str, dtype: str, device: str, *, revision: str | None = None,
               n_gpus: int = 1, trust_remote_code: bool = False, stage: str = "load"):
    """Load an unquantized checkpoint in ``dtype`` on ``device`` (eval mode)."""
    from transformers import AutoModelForCausalLM

    count_load(stage)
    model = AutoModelForCausalLM.from_pretrained(
        source, revision=revision, dtype=torch_dtype(dtype), device_map=device_map_for(device, n_gpus),
        trust_remote_code=trust_remote_code,
    )
    return model.eval()


def max_context(config: Any, recipe: ModelRecipe) -> int:
    ctx = getattr(config, "max_position_embeddings", None) or 2048
    return min(ctx, recipe.max_context) if recipe.max_context else ctx
