"""Memory cost of a model: bytes on disk, bytes resident, peak process memory, KV cache per token.

Resident weight bytes are counted from the tensors a model actually holds, because
``get_memory_footprint()`` is wrong for packed formats: torchao tensor subclasses report
their logical (bf16) size, and bitsandbytes keeps its block scales outside the parameters.
Peak memory has one definition, :class:`PeakRSS` (the process's peak resident set size
over a block), used by the quantize and benchmark stages alike.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.rundir.paths import dir_bytes

log = logging.getLogger(__name__)

# Objects hung on bitsandbytes parameters and modules that own the block scales
# (absmax, nested absmax, code book, int8 row scales) beside the packed data.
_QUANT_STATE_CLASSES = {"QuantState", "MatmulLtState"}


class MemoryMeasurementError(ValueError):
    """A memory measurement got input it cannot use; the message names the fix."""


def _inner_tensors(tensor) -> Iterator[Any]:
    """Yield the plain tensors that hold a tensor's real storage, unwrapping subclasses."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        # torchao (Float8Tensor, AffineQuantizedTensor, ...) keeps its data in inner
        # tensors; the wrapper's own storage is a phantom of the logical size.
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            yield from _inner_tensors(getattr(tensor, name))
    else:
        yield tensor


def _attached_tensors(obj, depth: int = 0) -> Iterator[Any]:
    """Yield tensors stored as attributes of a parameter or of a quantization state object."""
    import torch

    if depth > 3:
        return
    for value in getattr(obj, "__dict__", {}).values():
        if isinstance(value, torch.Tensor):
            yield value
        elif type(value).__name__ in _QUANT_STATE_CLASSES:
            yield from _attached_tensors(value, depth + 1)


def iter_resident_tensors(model) -> Iterator[Any]:
    """Yield every plain tensor a model holds: parameters, buffers and quantization states."""
    for module in model.modules():
        held = [t for t in module._parameters.values() if t is not None]
        held += [t for t in module._buffers.values() if t is not None]
        for tensor in held:
            yield from _inner_tensors(tensor)
            for extra in _attached_tensors(tensor):
                yield from _inner_tensors(extra)
        state = getattr(module, "state", None)  # bitsandbytes Linear8bitLt
        if type(state).__name__ in _QUANT_STATE_CLASSES:
            for extra in _attached_tensors(state):
                yield from _inner_tensors(extra)


def _byte_span(tensor) -> tuple[int, int]:
    """Return the [start, end) byte range of a tensor inside its storage."""
    size = tensor.element_size()
    if tensor.numel() == 0:
        return 0, 0
    last = sum((n - 1) * stride for n, stride in zip(tensor.shape, tensor.stride(), strict=True))
    start = tensor.storage_offset() * size
    return start, start + (last + 1) * size


def _union_length(spans: list[tuple[int, int]]) -> int:
    """Return the number of bytes covered by a set of byte ranges."""
    total, current_start, current_end = 0, None, None
    for start, end in sorted(spans):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def weights_bytes_by_device(model) -> dict[str, int]:
    """Return resident weight bytes per device, counting shared storage once."""
    spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
    skipped_meta = 0
    for tensor in iter_resident_tensors(model):
        if tensor.device.type == "meta":
            skipped_meta += 1  # offloaded or not materialised: not resident here
            continue
        # Tied weights and views share one storage: key by it, and union the byte
        # ranges so overlapping views are counted once and disjoint ones each.
        key = (str(tensor.device), tensor.untyped_storage().data_ptr())
        spans.setdefault(key, []).append(_byte_span(tensor))
    if skipped_meta:
        log.warning("%d tensors are on the meta device and were not counted", skipped_meta)
    by_device: dict[str, int] = {}
    for (device, _), ranges in spans.items():
        by_device[device] = by_device.get(device, 0) + _union_length(ranges)
    return by_device


def weights_bytes(model) -> int:
    """Return the bytes of weight tensors actually resident, packed formats included."""
    return sum(weights_bytes_by_device(model).values())


def input_embedding_bytes_unread(model) -> int:
    """Return the input embedding's bytes when decode does not read them whole, else 0.

    Decoding one token gathers one row of the input embedding; the whole table is read
    per token only when it is tied to the output projection.
    """
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    embedding = get_in() if get_in else None
    if embedding is None or getattr(embedding, "weight", None) is None:
        return 0
    output = get_out() if get_out else None
    in_weight = embedding.weight
    out_weight = getattr(output, "weight", None)
    if out_weight is not None and _shares_storage(in_weight, out_weight):
        return 0
    return sum(_byte_span(t)[1] - _byte_span(t)[0] for t in _inner_tensors(in_weight))


def _shares_storage(a, b) -> bool:
    """Return whether two (possibly subclass) tensors share any storage."""
    ptrs_a = {t.untyped_storage().data_ptr() for t in _inner_tensors(a)}
    ptrs_b = {t.untyped_storage().data_ptr() for t in _inner_tensors(b)}
    return bool(ptrs_a & ptrs_b)


def _dtype_bytes(dtype) -> int:
    """Return bytes per element of a torch dtype or its name (``"bfloat16"``, ``"torch.float16"``)."""
    import torch

    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        resolved = getattr(torch, name, None)
        if not isinstance(resolved, torch.dtype):
            raise MemoryMeasurementError(
                f"unknown dtype {dtype!r}: pass a torch.dtype or a name such as 'bfloat16'"
            )
        dtype = resolved
    if not isinstance(dtype, torch.dtype):
        raise MemoryMeasurementError(f"expected a torch.dtype, got {type(dtype).__name__}: {dtype!r}")
    return dtype.itemsize


def kv_bytes_per_token(config, dtype) -> int:
    """Return KV-cache bytes per token: 2 * layers * kv_heads * head_dim * bytes per element.

    Assumes full attention in every layer (no sliding windows, no latent compression).
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    heads = getattr(text, "num_attention_heads", None)
    if not layers or not heads:
        raise MemoryMeasurementError(
            f"config {type(config).__name__} has no num_hidden_layers/num_attention_heads; "
            "pass a decoder config (e.g. model.config of a causal LM)"
        )
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * layers * kv_heads * head_dim * _dtype_bytes(dtype)


def _reset_rss_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); return whether that worked."""
    try:
        # Writing 5 resets VmHWM (Linux >= 4.0).
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def reset_peak_memory(device=None) -> None:
    """Reset peak-memory counters: the process high-water mark and, on CUDA, the allocator's."""
    if not _reset_rss_high_water_mark():
        log.debug("cannot reset the process peak RSS; it covers the process lifetime")
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_bytes() -> int:
    """Return the process peak resident set size in bytes since the last reset (or process start)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux and bytes on macOS.
    return peak if sys.platform == "darwin" else peak * 1024


class PeakRSS:
    """Peak resident set size of this process while a block runs: qeval's one definition of peak memory.

    ``with PeakRSS() as peak: ...`` then ``peak.peak_bytes``. The quantize and benchmark
    stages both measure with it. Where the kernel's high-water mark can be reset (Linux),
    the peak is exact: VmHWM reset on entry, read on exit. Elsewhere a thread samples the
    RSS every ``interval_s`` (a lower bound: a spike shorter than the interval is missed),
    and ``exact`` is False.
    """

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.exact = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        self.exact = _reset_rss_high_water_mark()
        if not self.exact:
            import psutil

            process = psutil.Process()

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
                    self._stop.wait(self.interval_s)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.exact:
            self.peak_bytes = peak_rss_bytes()
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def cuda_peak_bytes(device=None) -> dict[str, int | None]:
    """Return CUDA allocator peaks (allocated, reserved) since the last reset, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {"cuda_peak_allocated_bytes": None, "cuda_peak_reserved_bytes": None}
    return {
        "cuda_peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
        "cuda_peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
    }


def _model_dtype(model):
    """Return the model's compute dtype, used for the KV cache."""
    import torch

    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def measure_memory(model, checkpoint_dir: Path | None = None, dtype=None, *, peak_rss: int | None = None) -> dict:
    """Return the memory record of a loaded model: the fields of ``MemoryResult`` but ``representative``.

    ``dtype`` is the KV-cache dtype; None takes the model's dtype. ``peak_rss`` is a
    :class:`PeakRSS` reading in bytes; None reads the peak since the last
    :func:`reset_peak_memory`, as do the CUDA peaks.
    """
    if checkpoint_dir is not None and not Path(checkpoint_dir).is_dir():
        raise MemoryMeasurementError(
            f"checkpoint directory {checkpoint_dir} does not exist: pass the saved model directory or None"
        )
    cuda_device = None
    devices = weights_bytes_by_device(model)
    if any(d.startswith("cuda") for d in devices):
        cuda_device = next(d for d in devices if d.startswith("cuda"))
    try:
        footprint = int(model.get_memory_footprint())
    except Exception as exc:  # a model without the HF mixin, or a quantizer that breaks it
        log.warning("get_memory_footprint() failed: %s", exc)
        footprint = None
    config = getattr(model, "config", None)
    record = {
        "disk_bytes": dir_bytes(checkpoint_dir) if checkpoint_dir is not None else None,
        "weights_bytes": sum(devices.values()),
        "weights_bytes_by_device": devices,
        "peak_rss_bytes": peak_rss if peak_rss is not None else peak_rss_bytes(),
        **cuda_peak_bytes(cuda_device),
        "kv_bytes_per_token": kv_bytes_per_token(config, dtype or _model_dtype(model)) if config else None,
        "kv_dtype": str(dtype or _model_dtype(model)).removeprefix("torch."),
        "get_memory_footprint_bytes": footprint,
    }
    if footprint is not None and footprint != record["weights_bytes"]:
        log.info(
            "get_memory_footprint() says %d bytes, resident tensors hold %d",
            footprint, record["weights_bytes"],
        )
    return record
