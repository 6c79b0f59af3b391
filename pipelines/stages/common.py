"""What every per-scheme stage shares: its context, the bad-input errors, and the skip/record wrapper.

The stage keys are in pipelines/stages/keys.py.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from evals.results import recording_compute
from pipelines.environment import library_versions
from pipelines.errors import QevalError, UnsupportedHere
from pipelines.quantizers import loading
from pipelines.recipes import ResolvedRecipe, models
from pipelines.rundir import Manifest, SchemeDir, read_json, scheme_dir

log = logging.getLogger(__name__)


def _bad_input_errors() -> tuple[type[Exception], ...]:
    """Errors that mean the request must change (exit code 2), not that a library broke.

    The one classification the CLI, the local worker and the Ray task all use: a stage
    raising one of these is recorded and re-raised (bad input); any other exception fails
    the stage (the sweep exits 4). Measurement errors from a library (memory, roofline,
    profiling) are not bad input.
    """
    from evals.data import DataError
    from evals.harness import TaskError
    from evals.perplexity import PerplexityError
    from evals.speed import SpeedMeasurementError

    return (QevalError, DataError, PerplexityError, TaskError, SpeedMeasurementError)


BAD_INPUT_ERRORS = _bad_input_errors()


@dataclass
class StageContext:
    """One scheme of one model, with its resolved recipe and run directory."""

    model: str
    scheme: str
    recipe: ResolvedRecipe
    sdir: SchemeDir
    force: bool = False
    show_progress: bool = True
    profile: bool = False

    @classmethod
    def from_run_dir(cls, model: str, scheme: str, **kwargs: Any) -> StageContext:
        """Rebuild the context from the recipe a sweep wrote into the run directory."""
        sdir = scheme_dir(model, scheme)
        if not sdir.recipe_path.is_file():
            raise QevalError(
                f"no resolved recipe at {sdir.recipe_path}. Run `qeval run --model {model} --schemes {scheme}` "
                "first, or check QEVAL_RUNS_DIR."
            )
        return cls(model, scheme, ResolvedRecipe.from_yaml(sdir.recipe_path), sdir, **kwargs)

    def __post_init__(self) -> None:
        # A recipe that was not planned by a sweep (a test, an old run directory) resolves its
        # compute dtype here, the same way the plan does.
        if self.recipe.model.compute is None:
            self.recipe.model.compute = models.resolve_compute(self.recipe.model, self.device)

    @property
    def device(self) -> str:
        return loading.resolve_device(self.recipe.device)

    @property
    def compute_dtype(self) -> str:
        """The dtype every model of this scheme is loaded, evaluated and served in: the sweep's
        (pipelines.compute)."""
        return self.recipe.compute_dtype

    @property
    def quantize_dtype(self) -> str:
        """The dtype the quantize step computes in: the sweep's, unless the scheme's library
        quantizes only in others."""
        return self._quantize_override()[0] or self.recipe.compute_dtype

    def _quantize_override(self) -> tuple[str | None, str | None]:
        from pipelines.quantizers import REGISTRY, get_quantizer

        if self.recipe.scheme.quantizer not in REGISTRY:
            return None, None
        quantizer = get_quantizer(self.recipe.scheme.quantizer)
        allowed, dtype = quantizer.quantize_dtypes, self.recipe.compute_dtype
        if not allowed or dtype in allowed:
            return None, None
        storage = self.recipe.model.dtype
        return (storage if storage in allowed else allowed[0]), quantizer.quantize_dtypes_reason

    def compute_record(self, stage: str | None = None) -> dict[str, Any]:
        """What the result files and the manifest record about the computation: the resolved
        dtype and why, the device, the CPU and its capability, and this process's torch threads.
        The quantize stage adds the dtype it quantized in where its library forced another."""
        choice = self.recipe.model.compute
        record = choice.model_dump(exclude={"probe_gflops", "warnings"}) if choice is not None else {}
        forced, why = self._quantize_override()
        if forced and stage == "quantize":
            record.update(quantize_dtype=forced, quantize_reason=why)
        return {**record, "threads": torch_threads()}

    @property
    def base_source(self) -> str:
        return models.source_path(self.recipe.model)

    def checkpoint(self) -> str:
        """The checkpoint later stages load: the saved one, or a prequantized source."""
        info = read_json(self.sdir.quantize_json)
        return info.get("checkpoint") or str(self.sdir.checkpoint_dir)


@cache
def _threads_at_start() -> int:
    """torch's intra-op thread count, read once: a library that changes it mid-run does not
    change the keys computed later in the same process."""
    import torch

    return torch.get_num_threads()


def torch_threads() -> int:
    return _threads_at_start()


def run_stage(ctx: StageContext, name: str, key: str, body: Callable[[], tuple[list[Path], dict]]) -> str:
    """Run ``body`` unless a finished entry has the same key; record status, timing, outputs.

    Returns "done", "cached", "skipped" or "failed". QevalError (bad input)
    propagates after being recorded; UnsupportedHere is recorded as skipped.
    """
    manifest = Manifest(ctx.sdir)
    if not ctx.force and manifest.is_done(name, key):
        log.info("%s/%s: %s is up to date (key %s), skipping", ctx.model, ctx.scheme, name, key)
        return "cached"
    manifest.start(name, key)
    log.info("%s/%s: %s started (key %s, pid %d)", ctx.model, ctx.scheme, name, key, os.getpid())
    loads_before = dict(loading.LOAD_COUNTS)
    start = time.perf_counter()
    compute = ctx.compute_record(name)
    try:
        with recording_compute(compute):
            outputs, extra = body()
    except UnsupportedHere as exc:
        log.warning("%s/%s: %s skipped: %s", ctx.model, ctx.scheme, name, exc)
        manifest.fail(name, str(exc), status="skipped")
        return "skipped"
    except BAD_INPUT_ERRORS as exc:
        manifest.fail(name, f"bad input: {exc}")
        raise
    except Exception as exc:  # a library failure fails this scheme's stage, not the sweep
        log.error("%s/%s: %s failed: %s", ctx.model, ctx.scheme, name, exc)
        manifest.fail(name, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
        return "failed"
    loads = {k: v - loads_before.get(k, 0) for k, v in loading.LOAD_COUNTS.items() if v != loads_before.get(k, 0)}
    # versions: `qeval plan` tells "library upgraded" apart; torch_threads: the sign-off checks the
    # key this stage had in the process that ran it (a Ray task may run with fewer threads).
    manifest.finish(name, outputs, time.perf_counter() - start, model_loads=loads,
                    **{"versions": library_versions(), "torch_threads": torch_threads(), "compute": compute, **extra})
    return "done"
