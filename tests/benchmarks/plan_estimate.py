"""Compare `qeval plan`'s estimate from the compute probe with a finished sweep's measured times.

    QEVAL_RUNS_DIR=runs python tests/benchmarks/plan_estimate.py smollm2-135m

Prints, per scheme and stage, the estimate (from the run's own recipe.yaml: its probe, dtype and
token counts, never from the measured durations) beside the duration in manifest.json, and the
totals with their ratio. A benchmark that prints figures, not a timed test.
"""

from __future__ import annotations

import json
import sys

from pipelines.execution.estimate import rates_of, stage_seconds
from pipelines.execution.plan import PER_SCHEME_STAGES
from pipelines.execution.preview import model_params
from pipelines.quantizers import get_quantizer
from pipelines.recipes import ResolvedRecipe
from pipelines.rundir import runs_root


def main(model: str) -> None:
    mdir = runs_root() / model
    total_est = total_measured = 0.0
    print(f"{'scheme':<10}{'stage':<11}{'estimate s':>11}{'measured s':>11}")
    for sdir in sorted(p for p in mdir.iterdir() if (p / "manifest.json").is_file()):
        recipe = ResolvedRecipe.from_yaml(sdir / "recipe.yaml")
        rates = rates_of(recipe, model_params(recipe.model))
        if rates is None:
            print(f"{sdir.name}: no probe in its recipe, no estimate")
            continue
        stages = json.loads((sdir / "manifest.json").read_text())["stages"]
        quantizer = get_quantizer(recipe.scheme.quantizer)
        for stage in PER_SCHEME_STAGES:
            measured = (stages.get(stage) or {}).get("duration_s")
            if measured is None:
                continue
            est = stage_seconds(stage, recipe, quantizer, rates, is_baseline=sdir.name == "baseline")
            total_est, total_measured = total_est + est, total_measured + measured
            print(f"{sdir.name:<10}{stage:<11}{est:>11.1f}{measured:>11.1f}")
    print(f"{'all stages':<21}{total_est:>11.1f}{total_measured:>11.1f}   estimate/measured "
          f"{total_est / total_measured:.2f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m")
