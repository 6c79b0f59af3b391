"""Per-tensor report of a GGUF: llama.cpp's type and bytes of each tensor, and its error.

Each tensor is dequantized with the ``gguf`` package and compared with the same tensor of
the shared F16 GGUF (the GGUF schemes' reference): relative Frobenius error
``||W_q - W_f16|| / ||W_f16||``. This is a weight-space error, unlike the activation-space
error the transformers schemes report (their layers' outputs on held-out windows); the
``module_type`` column carries the llama.cpp type so the two are never mistaken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.quantizers.layer_errors import LayerError

# Types gguf.quants cannot read back are listed with their sizes and no error.
_FLOAT_TYPES = {"F32", "F16", "BF16"}


def tensor_report(path: Path, reference: Path) -> tuple[list[LayerError], list[dict[str, Any]]]:
    """(errors of the quantized 2-D tensors, [{name, type, shape, n_elements, bytes, rel_error}])."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    quant = GGUFReader(path)
    ref = {t.name: t for t in GGUFReader(reference).tensors} if Path(reference) != Path(path) else {}
    errors: list[LayerError] = []
    rows: list[dict[str, Any]] = []
    for t in quant.tensors:
        kind = t.tensor_type.name
        row = {"name": t.name, "type": kind, "shape": [int(d) for d in t.shape],
               "n_elements": int(t.n_elements), "bytes": int(t.n_bytes), "rel_error": None}
        base = ref.get(t.name)
        if base is not None and base.tensor_type.name != kind and len(t.shape) > 1:
            try:
                w = dequantize(t.data, t.tensor_type).astype(np.float32).ravel()
                w0 = dequantize(base.data, base.tensor_type).astype(np.float32).ravel()
            except NotImplementedError:
                w = None  # a type gguf-py cannot dequantize: sizes only
            if w is not None:
                norm = float(np.linalg.norm(w0))
                row["rel_error"] = float(np.linalg.norm(w - w0)) / norm if norm else 0.0
                errors.append(LayerError(layer=t.name, rel_error=row["rel_error"],
                                         quantized=kind not in _FLOAT_TYPES, module_type=f"gguf:{kind}"))
        rows.append(row)
    return errors, rows
