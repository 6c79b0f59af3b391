"""Shared plumbing for the two gptqmodel-backed schemes (GPTQ and AWQ)."""

from __future__ import annotations

import logging
import os
import re

from pipelines.quantizers.base import QuantizeOutcome, QuantizeRequest

log = logging.getLogger(__name__)


def prepare_environment() -> None:
    # On a 2-core machine gptqmodel's worker pool asks for more CPU workers than
    # its parent pool has and fails; give it the cores this machine really has.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))


def skip_dynamic(ignore: list[str]) -> dict[str, dict] | None:
    """gptqmodel's ``dynamic`` config: a ``-:`` regex excludes a module from quantization."""
    rules = {f"-:^{re.escape(name)}$": {} for name in ignore if name != "lm_head"}
    return rules or None


def run(request: QuantizeRequest, config, backend_name: str, fmt: str) -> QuantizeOutcome:
    """Load the base model with gptqmodel, quantize on the calibration windows, save."""
    prepare_environment()
    from gptqmodel import BACKEND, GPTQModel

    backend = getattr(BACKEND, backend_name)
    from pipelines.quantizers.loading import SOURCE_LOAD, count_load

    count_load(SOURCE_LOAD)
    from pipelines.quantizers.loading import torch_dtype

    # gptqmodel picks bfloat16 on every CPU unless told: on one without native bf16 that is a
    # slow fallback path (minutes for GPTQ on 2 cores), so it computes in the sweep's dtype.
    model = GPTQModel.load(request.source, config, device=request.device, trust_remote_code=request.trust_remote_code,
                           dtype=torch_dtype(request.dtype))
    log_rows = model.quantize(request.calibration.as_gptqmodel(), batch_size=1, backend=backend)
    model.save(str(request.out_dir))
    losses = {}
    for rows in (log_rows or {}).values():
        for row in rows:
            try:
                losses[f"model.layers.{row['layer']}.{row['module']}"] = float(row["loss"])
            except (KeyError, TypeError, ValueError):
                continue
    return QuantizeOutcome(backend=backend_name, format=fmt, backend_losses=losses)


