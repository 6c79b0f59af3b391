"""Speed of a causal LM: prefill tokens/s and TTFT, decode tokens/s and inter-token latency.

Each measurement runs one prefill over a random prompt (its time is the time to first
token) and then a hand-written greedy decode loop with the KV cache, timing every step.
Warm-up iterations come first; timed iterations continue until both ``iters`` and
``min_time_s`` are reached; results are medians with their spread, since timings on a
shared CPU swing by large factors between runs.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
import platform
import time
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

SEED = 1234

_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


# Keys of a measured point; a point that failed carries them as None so every row has one shape.
_MEASURED_KEYS = (
    "iterations", "elapsed_s", "mean_decode_context_len",
    "prefill_tok_s", "ttft_ms", "decode_tok_s", "itl_ms",
)


class SpeedMeasurementError(ValueError):
    """A speed measurement got settings it cannot use; the message names the fix."""


@cache
def _cpu_model_name() -> str:
    """Return the CPU model string from /proc/cpuinfo, else the platform's."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(device) -> str:
    """Return a human name for a device: the GPU name or the CPU model string."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _cpu_model_name()
    return str(device)


def model_device(model):
    """Return the device of a model's first parameter (where inputs must go)."""
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def _is_linear(module) -> bool:
    """Return whether a module is a linear layer, dense or quantized."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return True
    name = type(module).__name__.lower()
    # Quantized linears of gptqmodel and others do not subclass nn.Linear.
    return "linear" in name and (hasattr(module, "qweight") or hasattr(module, "in_features"))


def describe_kernels(model) -> dict[str, int]:
    """Return which linear implementations a model runs, as {description: count}.

    A plain ``nn.Linear`` with a plain weight is ``"dense"``; a plain ``nn.Linear`` with a
    tensor-subclass weight (torchao) is ``"nn.Linear[<subclass>]"``; any other linear
    class is ``"<library>.<class>"``, e.g. ``"bitsandbytes.Linear4bit"`` or
    ``"gptqmodel.TorchQuantLinear"``.
    """
    import torch

    counts: dict[str, int] = {}
    for module in model.modules():
        if not _is_linear(module):
            continue
        cls = type(module)
        if cls is torch.nn.Linear:
            weight = module.weight
            plain = type(weight) in (torch.Tensor, torch.nn.Parameter)
            label = "dense" if plain else f"nn.Linear[{type(weight).__name__}]"
        else:
            label = f"{cls.__module__.split('.')[0]}.{cls.__name__}"
        counts[label] = counts.get(label, 0) + 1
    return counts


def is_out_of_memory(exc: BaseException) -> bool:
    """Return whether an exception means the device or host ran out of memory."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def summarize(values: list[float]) -> dict[str, float | int]:
    """Return n, median, mean, min, max and the p10/p50/p90/p99 percentiles of a sample."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    p10, p50, p90, p99 = np.percentile(array, [10, 50, 90, 99])
    return {
        "n": int(array.size),
        "median": float(np.median(array)),
        "mean": float(array.mean()),
        "min": float(array.min()),
        "max": float(array.max()),
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }


def synchronize(device) -> None:
    """Wait for queued device work so wall-clock timers see it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def greedy_step(model, input_ids, past_key_values, keep_last_logits: bool):
    """Run one cached forward and return (greedy next token, cache)."""
    kwargs: dict[str, Any] = {"use_cache": True}
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    if keep_last_logits:
        kwargs["logits_to_keep"] = 1  # serving engines compute only the last position's logits
    out = model(input_ids, **kwargs)
    return out.logits[:, -1, :].argmax(dim=-1, keepdim=True), out.past_key_values


def _one_iteration(model, prompt, gen_len: int, device, keep_last_logits: bool) -> tuple[float, list[float]]:
    """Prefill a prompt and decode ``gen_len - 1`` tokens; return (ttft seconds, step seconds)."""
    synchronize(device)
    start = time.perf_counter()
    token, cache = greedy_step(model, prompt, None, keep_last_logits)
    synchronize(device)
    ttft_s = time.perf_counter() - start
    steps_s = []
    # The prefill yields the first new token; each further token is one timed step.
    # No EOS stop: every iteration decodes the same number of tokens.
    for _ in range(gen_len - 1):
        start = time.perf_counter()
        token, cache = greedy_step(model, token, cache, keep_last_logits)
        synchronize(device)
        steps_s.append(time.perf_counter() - start)
    return ttft_s, steps_s


def random_prompt(batch_size: int, prompt_len: int, vocab_size: int, device):
    """Return random token ids of exactly the requested shape, the same for every run."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab_size, (batch_size, prompt_len), generator=generator)
    return ids.to(device)


def _measure_one(
    model, *, batch_size: int, prompt_len: int, gen_len: int, vocab_size: int, device,
    warmup: int, iters: int, min_time_s: float, keep_last_logits: bool, show_progress: bool,
) -> dict:
    """Measure one (batch size, prompt length, generation length) point."""
    from tqdm.auto import tqdm

    prompt = random_prompt(batch_size, prompt_len, vocab_size, device)
    ttfts_s: list[float] = []
    decode_tok_s: list[float] = []
    itl_s: list[float] = []
    label = f"speed bs={batch_size} prompt={prompt_len} gen={gen_len}"
    with tqdm(total=warmup + iters, desc=label, disable=not show_progress, leave=False) as bar:
        for _ in range(warmup):
            _one_iteration(model, prompt, gen_len, device, keep_last_logits)
            bar.update()
        started = time.perf_counter()
        while len(ttfts_s) < iters or time.perf_counter() - started < min_time_s:
            ttft_s, steps_s = _one_iteration(model, prompt, gen_len, device, keep_last_logits)
            ttfts_s.append(ttft_s)
            itl_s.extend(steps_s)
            decode_tok_s.append(batch_size * len(steps_s) / sum(steps_s))
            if len(ttfts_s) > iters:
                bar.total = len(ttfts_s) + warmup
            bar.update()
        elapsed_s = time.perf_counter() - started
    ms = 1000.0
    return {
        "status": "ok",
        "error": None,
        "iterations": len(ttfts_s),
        "elapsed_s": elapsed_s,
        # KV length read by decode step k is prompt_len + k, k = 1 .. gen_len - 1.
        "mean_decode_context_len": prompt_len + gen_len / 2,
        "prefill_tok_s": summarize([batch_size * prompt_len / t for t in ttfts_s]),
        "ttft_ms": summarize([t * ms for t in ttfts_s]),
        "decode_tok_s": summarize(decode_tok_s),
        "itl_ms": summarize([t * ms for t in itl_s]),
    }


def _free_memory(device) -> None:
    """Return freed tensors to the allocator after an out-of-memory error."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _validate(batch_sizes, prompt_lens, gen_lens, warmup: int, iters: int, min_time_s: float) -> None:
    """Reject settings that would give no or meaningless measurements."""
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise SpeedMeasurementError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if not prompt_lens or any(int(p) < 1 for p in prompt_lens):
        raise SpeedMeasurementError(f"prompt_lens must be positive integers, got {prompt_lens!r}")
    if not gen_lens or any(int(g) < 2 for g in gen_lens):
        raise SpeedMeasurementError(
            f"gen_lens must be >= 2 (the first token comes from the prefill, the rest are "
            f"timed decode steps), got {gen_lens!r}"
        )
    if iters < 1 or warmup < 0 or not math.isfinite(min_time_s) or min_time_s < 0:
        raise SpeedMeasurementError(
            f"need iters >= 1, warmup >= 0 and a finite min_time_s >= 0; got iters={iters}, "
            f"warmup={warmup}, min_time_s={min_time_s}"
        )


def measure_speed(
    model,
    tokenizer=None,
    *,
    batch_sizes=(1, 8),
    prompt_lens=(128,),
    gen_lens=(32,),
    warmup: int = 2,
    iters: int = 5,
    min_time_s: float = 0.0,
    device=None,
    show_progress: bool = True,
) -> dict:
    """Measure prefill/decode throughput and latencies for each batch size and length.

    A point that runs out of memory is recorded with status ``"oom"``, any other error
    with ``"failed"``; the other points are still measured. ``tokenizer`` only narrows
    the random prompt ids to its vocabulary.
    """
    import torch

    _validate(batch_sizes, prompt_lens, gen_lens, warmup, iters, min_time_s)
    device = torch.device(device) if device is not None else model_device(model)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    vocab_size = int(config.vocab_size)
    if tokenizer is not None:
        vocab_size = min(vocab_size, len(tokenizer))
    keep_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    settings = {
        "warmup": warmup,
        "iters": iters,
        "min_time_s": min_time_s,
        "batch_sizes": [int(b) for b in batch_sizes],
        "prompt_lens": [int(p) for p in prompt_lens],
        "gen_lens": [int(g) for g in gen_lens],
        "seed": SEED,
        "dtype": str(getattr(model, "dtype", "unknown")).removeprefix("torch."),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "logits_to_keep": keep_last_logits,
        "decode": "greedy, KV cache, fixed length (no EOS stop)",
    }
    results = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch_size in settings["batch_sizes"]:
                for prompt_len in settings["prompt_lens"]:
                    for gen_len in settings["gen_lens"]:
                        point = {"batch_size": batch_size, "prompt_len": prompt_len, "gen_len": gen_len}
                        point.update(_measure_guarded(
                            model, batch_size=batch_size, prompt_len=prompt_len, gen_len=gen_len,
                            vocab_size=vocab_size, device=device, warmup=warmup, iters=iters,
                            min_time_s=min_time_s, keep_last_logits=keep_last_logits,
                            show_progress=show_progress,
                        ))
                        results.append(point)
    finally:
        model.train(was_training)
    return {
        "device": describe_device(device),
        "kernel": describe_kernels(model),
        "settings": settings,
        "results": results,
    }


def _measure_guarded(model, *, device, batch_size: int, **kwargs) -> dict:
    """Measure one point, turning out-of-memory and other errors into a status."""
    error = None
    try:
        return _measure_one(model, device=device, batch_size=batch_size, **kwargs)
    except Exception as exc:  # one failing point must not lose the others
        status = "oom" if is_out_of_memory(exc) else "failed"
        error = f"{type(exc).__name__}: {exc}"[:2000]
        log.warning("speed batch_size=%d %s: %s", batch_size, status, error)
        if status == "failed":
            log.debug("speed failure traceback", exc_info=True)
    # Outside the except block the traceback (and the tensors its frames hold) is gone.
    _free_memory(device)
    return {"status": status, "error": error, **dict.fromkeys(_MEASURED_KEYS)}
