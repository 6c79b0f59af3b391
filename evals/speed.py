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
import time
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


def device_kind(device) -> str:
    """Return the torch device type a measurement ran on: ``"cpu"``, ``"cuda"``, ..."""
    import torch

    return torch.device(device).type


def device_name(device) -> str:
    """Return the hardware name of a device: the GPU name, or the CPU model string."""
    import torch

    from pipelines.environment import cpu_model

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_model()
    return str(device)


def mean_decode_context_len(prompt_len: int, gen_len: int) -> float:
    """Return the mean KV length the decode steps of one iteration read.

    Decode step k (k = 1 .. gen_len - 1) reads prompt_len + k cached positions, whose mean is
    prompt_len + gen_len / 2. The roofline and the sign-off's metrics both use this figure.
    """
    return prompt_len + gen_len / 2


def model_device(model):
    """Return the device of a model's first parameter (where inputs must go)."""
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


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
        "mean_decode_context_len": mean_decode_context_len(prompt_len, gen_len),
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
        "device_kind": device_kind(device),
        "device_name": device_name(device),
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
