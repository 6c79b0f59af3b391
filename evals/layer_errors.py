"""Per-layer relative output error of a quantized model against its base model.

For every linear layer of the base model, the inputs it sees on calibration
windows are captured; the quantized model's layer of the same name is run on
the same inputs, and ``||W x - W_q x|| / ||W x||`` is recorded. Each layer is
judged in isolation (same input), which tells a user which layers to keep in
higher precision.
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


def linear_layer_shapes(model) -> dict[str, tuple[int, int]]:
    """Map each nn.Linear's name to (out_features, in_features)."""
    import torch

    return {
        name: (mod.out_features, mod.in_features)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear)
    }


def measure_layer_errors(
    base_model,
    quant_model,
    windows: list[list[int]],
    *,
    ignored: set[str],
    max_rows: int = 2048,
    backend_losses: dict[str, float] | None = None,
) -> list[LayerError]:
    """Return one LayerError per linear layer, worst first.

    Args:
        windows: calibration token windows fed to the base model.
        ignored: layer names kept in high precision (reported with quantized=False).
        max_rows: token rows kept per layer, bounding memory on long windows.
    """
    import torch

    base_linears = {n: m for n, m in base_model.named_modules() if isinstance(m, torch.nn.Linear)}
    quant_modules = dict(quant_model.named_modules())
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in base_linears}
    counts = dict.fromkeys(base_linears, 0)

    def hook_for(name):
        def hook(_mod, args):
            if counts[name] >= max_rows:
                return
            x = args[0].detach().reshape(-1, args[0].shape[-1])[: max_rows - counts[name]]
            captured[name].append(x.cpu())
            counts[name] += x.shape[0]

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in base_linears.items()]
    device = next(base_model.parameters()).device
    try:
        with torch.inference_mode():
            for w in windows:
                if min(counts.values()) >= max_rows:
                    break
                base_model(torch.tensor([w], device=device))
    finally:
        for h in handles:
            h.remove()

    results = []
    with torch.inference_mode():
        # One whole-model forward first: compressed-tensors checkpoints stay
        # compressed after loading and decompress on their first forward.
        quant_model(torch.tensor([windows[0][:16]], device=_module_device(quant_model, device)))
        for name, base_lin in base_linears.items():
            qmod = quant_modules.get(name)
            if qmod is None or not captured[name]:
                continue
            x = torch.cat(captured[name])
            ref = base_lin(x.to(device)).float()
            qdev = _module_device(qmod, device)
            qdtype = _module_dtype(qmod, x.dtype)
            out = qmod(x.to(qdev, qdtype)).float().to(ref.device)
            denom = ref.norm().item()
            err = (ref - out).norm().item() / denom if denom > 0 else math.nan
            results.append(
                LayerError(
                    layer=name,
                    rel_error=err,
                    quantized=name not in ignored,
                    module_type=type(qmod).__name__,
                    backend_loss=(backend_losses or {}).get(name),
                )
            )
    results.sort(key=lambda r: (r.quantized, r.rel_error), reverse=True)
    return results


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


def to_csv(errors: list[LayerError]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["layer", "rel_error", "quantized", "module_type", "backend_loss"])
    for e in errors:
        writer.writerow([e.layer, f"{e.rel_error:.6g}", int(e.quantized), e.module_type,
                         "" if e.backend_loss is None else f"{e.backend_loss:.6g}"])
    return buf.getvalue()


def worst(errors: list[LayerError], n: int = 10) -> list[dict]:
    ranked = sorted((e for e in errors if e.quantized), key=lambda e: e.rel_error, reverse=True)
    return [{"layer": e.layer, "rel_error": e.rel_error, "backend_loss": e.backend_loss} for e in ranked[:n]]
