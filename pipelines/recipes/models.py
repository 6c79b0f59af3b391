"""Resolve a model name (recipe alias, Hub id or local directory) to its recipe and source."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from pipelines.errors import QevalError
from pipelines.recipes import embedded as default_model
from pipelines.recipes import user_files
from pipelines.recipes.resolve import available, load_recipe, unknown_name_message, validate
from pipelines.recipes.schema import ComputeChoice, ModelRecipe
from pipelines.rundir.paths import safe_name

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

def resolve_model(name: str) -> ModelRecipe:
    """Return the recipe for an alias, a local checkpoint directory or a Hub id.

    Raises:
        QevalError: the name is none of these; the message lists the aliases.
    """
    aliases = available("models")
    if user_files.is_recipe_path(name):  # a user's own model recipe file
        return validate(ModelRecipe, load_recipe("models", name), str(user_files.recipe_file("models", name)))
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
        + ". A model can also be a Hub id (org/name), a local checkpoint directory or a model recipe file (.yaml)."
    )


def _safe_name(name: str) -> str:
    """A run-directory name for a Hub id or a checkpoint folder: safe by construction (see paths.SAFE_NAME)."""
    return safe_name(name)


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


def max_context(config: Any, recipe: ModelRecipe) -> int:
    ctx = getattr(config, "max_position_embeddings", None) or 2048
    return min(ctx, recipe.max_context) if recipe.max_context else ctx


DEFAULT_PPL_SEQ_LEN = 2048


def perplexity_seq_len(configured: int | None, context: int) -> int:
    """The window length: as configured (checked against the context at planning), else 2048 capped."""
    return configured if configured is not None else min(DEFAULT_PPL_SEQ_LEN, context)


def resolve_compute(recipe: ModelRecipe, device: str) -> ComputeChoice:
    """The compute dtype this model's stages run in on ``device`` (pipelines.compute), with its reason.

    Reads the model's config for the probe's shapes and the float32 memory check; a config
    that cannot be read (a Hub model offline) probes generic shapes and skips the memory check.
    """
    from pipelines import compute
    from pipelines.geometry import estimate_params

    config = n_params = None
    if device != "cuda":  # the probe uses its shapes, the float32 memory check its size
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source_path(recipe), revision=recipe.revision,
                                                trust_remote_code=recipe.trust_remote_code)
            n_params = estimate_params(config)
        except Exception as exc:  # unreadable here: the probe falls back to generic shapes
            log.info("compute dtype: %s's config is not readable (%s); probing generic shapes", recipe.name, exc)
    return compute.resolve(recipe.compute_dtype, recipe.dtype, device, config=config, n_params=n_params)
