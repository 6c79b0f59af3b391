"""Per-layer relative output error of a quantized model against its base model.

For every linear layer of the base model, the inputs it sees on the held-out
windows (``calibration.layer_error_windows``: the same for every scheme, never
used to calibrate) are captured; the quantized model's layer of the same name
is run on the same inputs, and the raw ``||W x - W_q x|| / ||W x||`` is
recorded. Each layer is judged in isolation (same input), which tells a user
which layers to keep in higher precision.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerError:
    layer: str
    rel_error: float
    quantized: bool
    module_type: str
    backend_loss: float | None = None
    rel_error_fitted: float | None = None  # only for schemes that fold input scales; see measure_layer_errors


def linear_layer_shapes(model) -> dict[str, tuple[int, int]]:
    """Map each nn.Linear's name to (out_features, in_features)."""
    import torch

    return {
        name: (mod.out_features, mod.in_features)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear)
    }


def capture_linear_inputs(model, names: list[str], windows: list[list[int]], max_rows: int) -> dict:
    """Run ``model`` on ``windows`` and keep the first ``max_rows`` input rows of each named layer."""
    import torch

    modules = dict(model.named_modules())
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in names if n in modules}
    counts = dict.fromkeys(captured, 0)

    def hook_for(name):
        def hook(_mod, args):
            if counts[name] >= max_rows:
                return
            x = args[0].detach().reshape(-1, args[0].shape[-1])[: max_rows - counts[name]]
            captured[name].append(x.cpu())
            counts[name] += x.shape[0]

        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in captured]
    device = _module_device(model, torch.device("cpu"))
    try:
        with torch.inference_mode():
            for w in windows:
                if min(counts.values(), default=max_rows) >= max_rows:
                    break
                model(torch.tensor([w], device=device))
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(xs) for n, xs in captured.items() if xs}


def measure_layer_errors(
    base_model,
    quant_model,
    windows: list[list[int]],
    *,
    ignored: set[str],
    max_rows: int = 2048,
    backend_losses: dict[str, float] | None = None,
    folds_input_scales: bool = False,
) -> list[LayerError]:
    """Return one LayerError per linear layer, worst raw error first.

    Args:
        windows: held-out token windows fed to the base model (the same for every scheme).
        ignored: layer names kept in high precision (reported with quantized=False).
        max_rows: token rows kept per layer, bounding memory on long windows.
        folds_input_scales: the scheme divides a layer's input by per-channel
            scales folded into the op before it (AWQ, SmoothQuant) and multiplies
            the weight by them. ``rel_error`` stays raw (the base input, no
            correction: the layer as a drop-in for the base layer), and
            ``rel_error_fitted`` is added: the scales are estimated per input
            channel as the RMS ratio of the base and quantized models' inputs,
            the base input is divided by them, and each output channel gets a
            least-squares gain for scales folded the other way. The gain absorbs
            some real error, which is why the fitted figure is never the headline.
    """
    import torch

    names = [n for n, m in base_model.named_modules() if isinstance(m, torch.nn.Linear)]
    base_modules = dict(base_model.named_modules())
    quant_modules = dict(quant_model.named_modules())
    device = next(base_model.parameters()).device
    base_inputs = capture_linear_inputs(base_model, names, windows, max_rows)
    if folds_input_scales:
        quant_inputs = capture_linear_inputs(quant_model, names, windows, max_rows)
    else:
        quant_inputs = {}
        # A whole-model forward first: compressed-tensors checkpoints stay
        # compressed after loading and decompress on their first forward.
        with torch.inference_mode():
            quant_model(torch.tensor([windows[0][:16]], device=_module_device(quant_model, device)))

    results = []
    with torch.inference_mode():
        for name in names:
            qmod = quant_modules.get(name)
            if qmod is None or name not in base_inputs:
                continue
            x = base_inputs[name]
            ref = base_modules[name](x.to(device)).float()
            out = _run_layer(qmod, x, device).to(ref.device)
            fitted = None
            if folds_input_scales and name in quant_inputs:
                x_scaled = x / _input_scales(x, quant_inputs[name]).to(x.dtype)
                out_scaled = _run_layer(qmod, x_scaled, device).to(ref.device)
                # The layer's output may carry the scales folded into the next
                # layer (AWQ scales up_proj's rows for down_proj): undo them with a
                # least-squares gain per output channel.
                gain = (ref * out_scaled).sum(0) / out_scaled.pow(2).sum(0).clamp_min(1e-12)
                fitted = relative_error(ref, out_scaled * gain)
            results.append(
                LayerError(
                    layer=name,
                    rel_error=relative_error(ref, out),
                    quantized=name not in ignored,
                    module_type=type(qmod).__name__,
                    backend_loss=(backend_losses or {}).get(name),
                    rel_error_fitted=fitted,
                )
            )
    results.sort(key=lambda r: (r.quantized, r.rel_error), reverse=True)
    return results


def relative_error(ref, out) -> float:
    """``||ref - out|| / ||ref||`` over all rows and channels (NaN when the reference is zero)."""
    denom = ref.norm().item()
    return (ref - out).norm().item() / denom if denom > 0 else math.nan


def _run_layer(qmod, x, default_device):
    """Run one (quantized) layer on ``x`` in the device and dtype it expects; float32 output."""
    qdev = _module_device(qmod, default_device)
    return qmod(x.to(qdev, _module_dtype(qmod, x.dtype))).float()


def _input_scales(x_base, x_quant):
    """Per-channel RMS ratio of two captures of a layer's input (1 where a channel is silent)."""
    rms_base = x_base.float().pow(2).mean(0).sqrt()
    rms_quant = x_quant.float().pow(2).mean(0).sqrt()
    scales = rms_base / rms_quant.clamp_min(1e-8)
    return scales.where((rms_base > 0) & (rms_quant > 0), scales.new_ones(()))


def _module_device(module, default):
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return default


def _module_dtype(module, default):
    """The activation dtype a quantized layer expects (its scales' or bias' float dtype)."""
    import torch

    for t in list(module.buffers()) + list(module.parameters()):
        if t.is_floating_point() and t.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
            return t.dtype
    return default


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def to_csv(errors: list[LayerError]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["layer", "rel_error", "quantized", "module_type", "backend_loss", "rel_error_fitted"])
    for e in errors:
        writer.writerow([e.layer, f"{e.rel_error:.6g}", int(e.quantized), e.module_type,
                         _fmt(e.backend_loss), _fmt(e.rel_error_fitted)])
    return buf.getvalue()


def worst(errors: list[LayerError], n: int = 10) -> list[dict]:
    """The ``n`` quantized layers with the largest raw error (the fitted figure rides along)."""
    ranked = sorted((e for e in errors if e.quantized), key=lambda e: e.rel_error, reverse=True)
    return [{"layer": e.layer, "rel_error": e.rel_error, "rel_error_fitted": e.rel_error_fitted,
             "backend_loss": e.backend_loss} for e in ranked[:n]]
