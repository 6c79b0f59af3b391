"""How long each stage will take on this machine, from the compute probe and the suite's token counts.

A stage's time is a fixed part (process start, imports, model loads, a server's start) plus its
compute: the tokens it pushes through the model, at the rates the compute probe measured on this
machine for the resolved dtype (pipelines.compute). Prefill-like work (perplexity windows,
task log-likelihoods, calibration) runs at the probe's GEMM rate, decoding at its GEMV rate.

    prefill seconds = tokens x 2 x parameters / prefill GFLOP/s
    decode seconds  = steps x (2 x parameters x batch / min(batch x decode GFLOP/s, prefill GFLOP/s)
                               + a fixed cost per step)

The constants below (fixed seconds, passes, each quantizer's kernel cost) were fitted on the
default sweep of the embedded model on 2 vCPUs of an AMD EPYC (AVX-512 with native bf16, and the
same CPU restricted to AVX2 with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2); docs/compute.md
gives the measured and estimated figures. Where there is no probe (CUDA), there is no estimate
from it, and the plan falls back to earlier runs.
"""

from __future__ import annotations

from dataclasses import dataclass

# Token counts of a full evaluation set, for suites that do not cap it (tokenizer-dependent:
# Llama-family tokenizers).
DATASET_TOKENS = {"wikitext2": 300_000, "c4": 256 * 2048}
# Task sizes (documents), answer choices per document and mean tokens per choice (context + continuation).
TASK_SHAPES = {
    "arc_easy": (2376, 4, 40), "arc_challenge": (1172, 4, 45), "piqa": (1838, 2, 45),
    "hellaswag": (10042, 4, 90), "winogrande": (1267, 2, 30), "lambada_openai": (5153, 1, 80),
}
USER_TASK_SHAPE = (1000, 4, 64)
# Generative tasks: prompt tokens (5-shot chain of thought) of one problem.
GENERATIVE_PROMPT_TOKENS = {"gsm8k": 1100}
GENERATIVE_DOCS = {"gsm8k": 1319}

# Fixed seconds of each stage (process start, imports, loads, writes) on the reference machine.
# evaluate: 14 s, refitted after the quick suite's trim (8 windows, 30 examples), when 24 s put both
# reference CPUs' estimates 16-17 % over their measured stage sums.
FIXED_S = {"quantize": 2.0, "evaluate": 14.0, "benchmark": 9.0, "serve": 20.0}
# The embedded model's parameters: fixed parts measured on it grow with a model's size.
REFERENCE_PARAMS = 134_515_008
# The quantize stage's reload of the base and the quantized model, and their layer-by-layer errors.
LAYER_ERRORS_S = 13.0
# The share of the probe's GEMM and GEMV rates a whole forward reaches (attention, norms, the
# Python between layers).
MODEL_EFFICIENCY = 0.8
# Per decoding step, on top of its matmuls: the Python of transformers' generate loop and sampling
# (about 40 ms a token for the embedded model, against 9 ms of matmuls).
DECODE_STEP_S = 0.03
# The sweep's own time outside the stages: planning, each scheme's worker start and manifest
# writes, then the sign-off, its report and MLflow. Measured as wall time minus the stage sum of
# the default sweep: 101 s (AVX-512, bf16) and 83 s (AVX2, fp32) for 6 schemes.
SWEEP_FIXED_S = 30.0
SCHEME_OVERHEAD_S = 10.0


def sweep_overhead_s(schemes_to_run: int) -> float:
    """Seconds a sweep spends outside its stages; none when every stage is cached."""
    return SWEEP_FIXED_S + SCHEME_OVERHEAD_S * schemes_to_run if schemes_to_run else 0.0


@dataclass(frozen=True)
class Rates:
    """The probe's GFLOP/s in the resolved dtype, and the model's parameter count."""

    prefill_gflops: float
    decode_gflops: float
    params: int
    step_s: float = 0.0  # fixed cost of one decoding step
    floor_gflops: float | None = None  # the noise floor's prefill rate (float32), where it differs

    def of(self, quantizer) -> Rates:
        """The rates of a scheme's layers: dense ones' divided by its kernel costs."""
        return Rates(self.prefill_gflops / quantizer.prefill_cost, self.decode_gflops / quantizer.decode_cost,
                     self.params, self.step_s * quantizer.decode_cost, self.floor_gflops)

    def prefill_s(self, tokens: float) -> float:
        return self._forward_s(tokens, self.prefill_gflops)

    def decode_s(self, steps: float, batch: int = 1) -> float:
        rate = min(batch * self.decode_gflops, self.prefill_gflops)
        return steps * (2 * self.params * batch / (rate * 1e9) + self.step_s)

    def floor_s(self, tokens: float) -> float:
        """The baseline's second precision for the noise floor (float32 where the sweep is not)."""
        return self._forward_s(tokens, self.floor_gflops or self.prefill_gflops)

    def _forward_s(self, tokens: float, gflops: float) -> float:
        return tokens * 2 * self.params / (gflops * 1e9)


def rates_of(recipe, params: int | None) -> Rates | None:
    """The probe's rates for the recipe's compute dtype; None without a probe or a parameter count."""
    choice = recipe.model.compute
    gflops = (choice.probe_gflops or {}) if choice is not None else {}
    dtype, prefill_row = recipe.compute_dtype, gflops.get("prefill") or {}
    prefill, decode = prefill_row.get(dtype), (gflops.get("decode") or {}).get(dtype)
    if not params or not prefill or not decode:
        return None
    fp32 = prefill_row.get("float32")
    return Rates(MODEL_EFFICIENCY * prefill, MODEL_EFFICIENCY * decode, params, DECODE_STEP_S,
                 MODEL_EFFICIENCY * fp32 if fp32 and dtype != "float32" else None)


def stage_seconds(stage: str, recipe, quantizer, rates: Rates, *, is_baseline: bool) -> float:
    """Estimated seconds of one stage of one scheme."""
    if stage == "quantize":
        return quantize_s(recipe, quantizer, rates)
    scheme_rates = rates.of(quantizer)
    if stage == "evaluate":
        return FIXED_S["evaluate"] + evaluate_compute_s(recipe, scheme_rates, is_baseline=is_baseline)
    if stage == "benchmark":
        return FIXED_S["benchmark"] + benchmark_compute_s(recipe, scheme_rates)
    if stage == "serve":
        return (FIXED_S["serve"] + serve_compute_s(recipe, scheme_rates)) if recipe.serve.enabled else 1.0
    raise ValueError(f"unknown stage {stage!r}")


def quantize_s(recipe, quantizer, rates: Rates) -> float:
    """Loading and saving; for a calibrating quantizer its per-layer search (a fixed part that
    grows with the model, and forward-pass equivalents per calibration token); and the
    layer-error pass, which reloads both models."""
    seconds = FIXED_S["quantize"]
    if quantizer.calibrates:
        cal = recipe.calibration
        seconds += quantizer.calibration_fixed_s * rates.params / REFERENCE_PARAMS
        seconds += quantizer.calibration_passes * rates.prefill_s(cal.n_samples * cal.seq_len)
    if quantizer.measures_layer_errors:
        seconds += LAYER_ERRORS_S * rates.params / REFERENCE_PARAMS
    return seconds


def ppl_tokens(recipe) -> int:
    from pipelines.recipes.models import DEFAULT_PPL_SEQ_LEN, perplexity_seq_len

    ppl = recipe.perplexity
    seq_len = perplexity_seq_len(ppl.seq_len, recipe.model.max_context or DEFAULT_PPL_SEQ_LEN)
    total = 0
    for dataset in ppl.datasets:
        windows = DATASET_TOKENS.get(dataset, 300_000) // seq_len
        total += seq_len * (min(windows, ppl.max_windows) if ppl.max_windows else windows)
    return total


def task_limit(recipe, name: str) -> int | None:
    limit = recipe.tasks.limit
    return limit.get(name) if isinstance(limit, dict) else limit


def evaluate_compute_s(recipe, rates: Rates, *, is_baseline: bool) -> float:
    """Perplexity (fidelity's comparison and the baseline's reference ride on its pass; the
    baseline adds one pass in a second precision for the noise floor), then the tasks."""
    tokens = ppl_tokens(recipe)
    seconds = rates.prefill_s(tokens)
    fidelity = recipe.perplexity.fidelity
    if is_baseline and fidelity is not None and fidelity.noise_floor:
        seconds += rates.floor_s(tokens)
    for name in recipe.tasks.names:
        limit = task_limit(recipe, name)
        if name in GENERATIVE_PROMPT_TOKENS:
            docs = limit or GENERATIVE_DOCS[name]
            steps = recipe.tasks.generation.max_gen_toks
            seconds += docs * (rates.prefill_s(GENERATIVE_PROMPT_TOKENS[name]) + rates.decode_s(steps))
            continue
        full, choices, tokens = TASK_SHAPES.get(name, USER_TASK_SHAPE)
        seconds += rates.prefill_s((limit or full) * choices * tokens)
    return seconds


def benchmark_compute_s(recipe, rates: Rates) -> float:
    """Every (batch, prompt, generation) cell, warm-up and timed runs, each at least min_time_s."""
    b = recipe.benchmark
    seconds = 0.0
    for batch in b.batch_sizes:
        for prompt in b.prompt_lens:
            for gen in b.gen_lens:
                one = rates.prefill_s(batch * prompt) + rates.decode_s(gen, batch)
                seconds += b.warmup * one + max(b.iters * one, b.min_time_s)
    return seconds


def serve_compute_s(recipe, rates: Rates) -> float:
    """The warm-up, then each level's requests (streams share the engine, so the work adds up)."""
    s = recipe.serve
    one = rates.prefill_s(s.prompt_tokens) + rates.decode_s(s.output_tokens)
    seconds = s.warmup_requests * one
    for level in s.levels:
        # requests / level rounds of `level` streams, each prefilling and then decoding together
        level_s = s.requests_per_level / level * (rates.prefill_s(level * s.prompt_tokens)
                                                  + rates.decode_s(s.output_tokens, level))
        seconds += min(level_s, s.max_seconds_per_level) if s.max_seconds_per_level else level_s
    return seconds
