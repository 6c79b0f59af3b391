"""`qeval plan`'s time estimate from the compute probe and the suite's token counts (no model runs)."""

from __future__ import annotations

import pytest

from pipelines import recipes as config
from pipelines.compute import ComputeDecision
from pipelines.execution import estimate
from pipelines.quantizers import get_quantizer
from pipelines.recipes.models import resolve_model

PARAMS = estimate.REFERENCE_PARAMS


def recipe_with_probe(scheme: str, prefill: float, decode: float, suite: str = "quick", **overrides):
    recipe = config.resolve_recipe(resolve_model("smollm2-135m"), scheme, config.load_suite(suite))
    recipe = recipe.model_copy(update=overrides, deep=True)
    recipe.model.compute = ComputeDecision(
        dtype="float32", requested="auto", storage_dtype="bfloat16", reason="test", device="cpu", threads=2,
        probe_gflops={"prefill": {"float32": prefill}, "decode": {"float32": decode}})
    return recipe


def total(recipe, scheme: str) -> float:
    rates = estimate.rates_of(recipe, PARAMS)
    quantizer = get_quantizer(recipe.scheme.quantizer)
    return sum(estimate.stage_seconds(stage, recipe, quantizer, rates, is_baseline=scheme == "baseline")
               for stage in ("quantize", "evaluate", "benchmark", "serve"))


def test_no_probe_or_no_parameter_count_gives_no_estimate():
    recipe = recipe_with_probe("baseline", 100.0, 20.0)
    assert estimate.rates_of(recipe, None) is None
    recipe.model.compute.probe_gflops = None
    assert estimate.rates_of(recipe, PARAMS) is None


def test_a_slower_machine_gets_a_longer_estimate_in_proportion_to_its_compute():
    fast, slow = recipe_with_probe("gptq", 160.0, 30.0), recipe_with_probe("gptq", 16.0, 3.0)
    rates_fast, rates_slow = estimate.rates_of(fast, PARAMS), estimate.rates_of(slow, PARAMS)
    assert rates_slow.prefill_s(8192) == pytest.approx(10 * rates_fast.prefill_s(8192))
    assert total(slow, "gptq") > 3 * total(fast, "gptq")


def test_more_tokens_cost_more_time_and_the_baseline_pays_for_the_noise_floor():
    quick = recipe_with_probe("int8", 160.0, 30.0)
    rates = estimate.rates_of(quick, PARAMS)
    doubled = quick.model_copy(deep=True)
    doubled.perplexity.max_windows = 2 * quick.perplexity.max_windows
    one = estimate.evaluate_compute_s(quick, rates, is_baseline=False)
    two = estimate.evaluate_compute_s(doubled, rates, is_baseline=False)
    assert two - one == pytest.approx(rates.prefill_s(estimate.ppl_tokens(quick)))
    assert estimate.evaluate_compute_s(quick, rates, is_baseline=True) > one
    uncapped = quick.model_copy(deep=True)
    uncapped.perplexity.max_windows = None  # every WikiText-2 window
    assert estimate.ppl_tokens(uncapped) > 30 * estimate.ppl_tokens(quick)


def test_a_slower_kernel_and_calibration_make_a_scheme_slower_than_the_baseline():
    base, gptq = recipe_with_probe("baseline", 160.0, 30.0), recipe_with_probe("gptq", 160.0, 30.0)
    rates = estimate.rates_of(base, PARAMS)
    q_base = estimate.quantize_s(base, get_quantizer("baseline"), rates)
    q_gptq = estimate.quantize_s(gptq, get_quantizer("gptq"), rates)
    assert q_base == estimate.FIXED_S["quantize"] and q_gptq > q_base + estimate.LAYER_ERRORS_S
    fp8 = get_quantizer(recipe_with_probe("fp8", 160.0, 30.0).scheme.quantizer)
    assert estimate.benchmark_compute_s(base, rates.of(fp8)) > estimate.benchmark_compute_s(base, rates)
