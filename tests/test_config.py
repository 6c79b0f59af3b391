"""Recipes: validation, merging, model names."""

from __future__ import annotations

import pytest

from pipelines import recipes as config
from pipelines.errors import QevalError
from pipelines.recipes.models import resolve_model


def test_every_shipped_recipe_validates():
    for name in config.available("suites"):
        config.load_suite(name)
    for name in config.available("schemes"):
        config.load_scheme(name)
    for name in config.available("models"):
        resolve_model(name)
    assert {"smoke", "standard"} <= set(config.available("suites"))
    assert {"smollm2-135m", "llama-7b", "llama-2-7b", "llama-3.1-8b"} <= set(config.available("models"))


def test_model_overrides_and_suite_calibration_apply_in_order():
    model = resolve_model("smollm2-135m")
    suite = config.load_suite("smoke")
    gptq = config.resolve_recipe(model, "gptq", suite)
    assert gptq.scheme.params["group_size"] == 64  # model override beats the scheme default (128)
    assert gptq.scheme.params["bits"] == 4
    assert (gptq.calibration.n_samples, gptq.calibration.seq_len) == (8, 128)  # suite beats paper default
    awq = config.resolve_recipe(model, "awq", suite)
    assert (awq.calibration.n_samples, awq.calibration.seq_len) == (2, 64)  # per-scheme beats suite
    standard = config.resolve_recipe(model, "gptq", config.load_suite("standard"))
    assert (standard.calibration.n_samples, standard.calibration.seq_len) == (128, 2048)  # GPTQ paper
    awq_std = config.resolve_recipe(model, "awq", config.load_suite("standard"))
    assert (awq_std.calibration.n_samples, awq_std.calibration.seq_len) == (128, 512)  # AWQ paper


def test_resolved_recipe_round_trips_through_yaml(tmp_path):
    recipe = config.resolve_recipe(resolve_model("smollm2-135m"), "nf4", config.load_suite("smoke"))
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    assert config.ResolvedRecipe.from_yaml(path) == recipe


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(QevalError, match=r"unknown key 'tasks.limt'.*did you mean 'limit'"):
        config.validate(config.SuiteRecipe, {"name": "x", "schemes": [], "tasks": {"limt": 3}}, "suite x")


def test_set_overrides_parse_as_yaml():
    assert config.parse_set_overrides(["perplexity.seq_len=512", "tasks.names=[a, b]"]) == {
        "perplexity": {"seq_len": 512}, "tasks": {"names": ["a", "b"]}}
    with pytest.raises(QevalError, match="key=value"):
        config.parse_set_overrides(["perplexity.seq_len"])


def test_model_names(tiny_llama_dir):
    assert resolve_model("meta-llama/Llama-2-7b-hf").source == "meta-llama/Llama-2-7b-hf"
    local = resolve_model(str(tiny_llama_dir))
    assert local.source == str(tiny_llama_dir) and local.dtype == "float32"
    with pytest.raises(QevalError, match="Unknown model 'lama-7b'. Did you mean 'llama-7b'"):
        resolve_model("lama-7b")
