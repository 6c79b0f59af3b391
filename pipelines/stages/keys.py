"""Every stage key in one place: a stage whose key matches a finished entry is skipped.

(Being consolidated: the key functions still live beside their stages.)
"""

from __future__ import annotations

from pipelines.stages.common import StageContext


def stage_keys(ctx: StageContext) -> dict[str, str]:
    """The key each per-scheme stage would have now, under the current recipe and environment."""
    from pipelines.quantizers import get_quantizer
    from pipelines.stages import benchmark, evaluate
    from pipelines.stages.common import quantize_key

    return {
        "quantize": quantize_key(ctx.recipe, get_quantizer(ctx.recipe.scheme.quantizer).needs_calibration),
        "evaluate": evaluate.evaluate_key(ctx),
        "benchmark": benchmark.benchmark_key(ctx),
    }
