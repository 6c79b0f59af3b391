"""Run a whole sweep: plan, per-scheme stages through an executor, sign-off, tracking."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import (
    EXIT_BAD_INPUT,
    EXIT_CRASH,
    EXIT_FAIL,
    EXIT_INCOMPLETE,
    EXIT_INCONCLUSIVE,
    EXIT_PASS,
)
from pipelines.execution.local import WORKER_BAD_INPUT, WORKER_OK, run_local
from pipelines.execution.plan import PER_SCHEME_STAGES, SweepOptions, plan, write_plan
from pipelines.rundir import Manifest, model_dir, scheme_dir, update_json

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    model: str
    schemes: list[str]
    worker_codes: dict[str, int]
    signoff: dict[str, Any] | None
    tracking: dict[str, Any] | None
    wall_s: float
    exit_code: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"\nqeval sweep of {self.model}: {len(self.schemes)} schemes in {self.wall_s:.0f} s", ""]
        lines += stage_table(self.model, self.schemes)
        if self.signoff:
            lines += ["", signoff_table(self.signoff)]
        lines += [""] + self.notes
        from pipelines.execution.explain import verdict_lines

        lines += verdict_lines(self.model, self.signoff, self.exit_code)
        return "\n".join(lines)


def stage_table(model: str, schemes: list[str]) -> list[str]:
    """Status and wall time of each stage per scheme, with model loads counted."""
    head = f"{'scheme':<14}" + "".join(f"{s:>18}" for s in PER_SCHEME_STAGES) + f"{'model loads':>14}"
    rows = [head, "-" * len(head)]
    for scheme in schemes:
        stages = Manifest(scheme_dir(model, scheme)).data.get("stages", {})
        cells, loads = [], 0
        for stage in PER_SCHEME_STAGES:
            entry = stages.get(stage, {})
            status = entry.get("status", "-")
            cells.append(f"{status} {entry['duration_s']:.1f}s" if "duration_s" in entry else status)
            loads += sum(entry.get("model_loads", {}).values())
        rows.append(f"{scheme:<14}" + "".join(f"{c:>18}" for c in cells) + f"{loads:>14}")
    return rows


def signoff_table(result: dict[str, Any]) -> str:
    """The verdict per scheme, and each gate that did not pass."""
    lines = [f"sign-off: {result.get('overall')} (exit code {result.get('exit_code')})",
             f"{'scheme':<14}{'verdict':<14}gates that did not pass"]
    by_scheme = {s["scheme"]: s for s in result.get("schemes", [])}
    for scheme, verdict in result.get("verdicts", {}).items():
        detail = by_scheme.get(scheme, {})
        bad = [f"{g['gate']}={g['verdict']}" for g in detail.get("gates", []) if g["verdict"] not in ("PASS",)]
        if scheme in result.get("not_judged", {}):
            bad = [result["not_judged"][scheme]]
        lines.append(f"{scheme:<14}{verdict:<14}{', '.join(bad)}")
    return "\n".join(lines)


def run_sweeps(options: list[SweepOptions], announce: Callable[[str], None] | None = None) -> list[SweepResult]:
    """Run one sweep per model: plan all first (bad input fails before any work), execute, then
    sign off and track each model. ``announce`` gets the first lines: what each sweep will do."""
    start = time.perf_counter()
    if any(opts.executor == "ray" for opts in options):
        from pipelines.execution.ray import require_ray

        require_ray()  # before any work: a missing extra is bad input, not a traceback
    plans = [plan(opts) for opts in options]
    if announce is not None:
        from pipelines.execution.preview import format_header, preview_plan

        for p, opts in zip(plans, options, strict=True):  # before anything is written: the cache as it is
            announce(format_header(preview_plan(p, opts)))
    for p, opts in zip(plans, options, strict=True):
        write_plan(p, opts)
    opts0 = options[0]
    jobs = [(p.model, s) for p in plans for s in p.recipes if s not in p.skipped]
    flags = dict(force=opts0.force, quiet=opts0.quiet, profile=opts0.profile)
    if opts0.executor == "ray":
        from pipelines.execution.ray import run_ray

        codes = run_ray(jobs, **flags)
    else:
        codes = run_local(jobs, **flags)
    # Every model is signed off before any is tracked: an MLflow error cannot cost a verdict.
    results = [finish_sweep(p, opts, codes, time.perf_counter() - start) for p, opts in zip(plans, options, strict=True)]
    for result, opts in zip(results, options, strict=True):
        if opts.track:
            track_result(result, opts)
    return results


# Which code wins when a run has several: a crash, then bad input, then an unfinished sweep,
# then the verdicts (fail beats inconclusive beats pass).
EXIT_PRECEDENCE = (EXIT_CRASH, EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_PASS)


def worst_exit_code(codes: list[int]) -> int:
    for code in EXIT_PRECEDENCE:
        if code in codes:
            return code
    return EXIT_CRASH if codes else EXIT_PASS  # an unknown code is not a pass


def finish_sweep(p, opts: SweepOptions, codes: dict, wall_s: float) -> SweepResult:
    """Sign off and track one model's sweep once its schemes have run.

    Exit code: bad input (2) where a worker rejected its input or a scheme the user named
    cannot run here; incomplete (4) where a stage failed; else the sign-off's code (which is
    4 itself when a scheme could not be judged).
    """
    from pipelines.errors import QevalError
    from pipelines.stages import signoff

    schemes = list(p.recipes)
    model_codes = {s: codes.get((p.model, s), WORKER_OK) for s in schemes if s not in p.skipped}
    notes = [f"skipped {s}: {why}" for s, why in p.skipped.items()]
    failed = [s for s, c in model_codes.items() if c not in (WORKER_OK, WORKER_BAD_INPUT)]
    notes += [f"FAILED {s}: see {scheme_dir(p.model, s).manifest_path}" for s in failed]
    result, signoff_code = None, EXIT_INCOMPLETE
    try:
        result = signoff.run(p.model, schemes)
        signoff_code = result["exit_code"]
    except QevalError as exc:  # no baseline results, most likely; report it, keep every result
        notes.append(f"sign-off not possible: {exc}")
    update_json(model_dir(p.model) / "sweep.json", lambda sweep: sweep.update(finished_at=time.time()))
    notes.append(f"results: {model_dir(p.model)}")
    codes_here = [signoff_code]
    # A scheme the user named that cannot run here, or a worker that rejected its input, is bad
    # input for this request; a scheme that `all` or the suite brought in is only reported.
    named = set(opts.schemes or []) - {"all"}
    if named & set(p.skipped) or WORKER_BAD_INPUT in model_codes.values():
        codes_here.append(EXIT_BAD_INPUT)
    if failed:
        codes_here.append(EXIT_INCOMPLETE)
        notes.append(f"the sweep did not finish: {len(failed)} scheme(s) failed (exit code {EXIT_INCOMPLETE})")
    exit_code = worst_exit_code(codes_here)
    return SweepResult(p.model, schemes, model_codes, result, None, wall_s, exit_code, notes)


def track_result(result: SweepResult, opts: SweepOptions) -> None:
    """Log a signed-off sweep to MLflow. An outage or an MLflow error (a locked sqlite file, a
    401) leaves the sweep marked unsynced for `qeval sync` and is reported; the sign-off and its
    exit code stand, since every result and the report are already written."""
    from pipelines import tracking

    try:
        result.tracking = tracking.track_sweep(result.model, result.schemes, experiment=opts.experiment,
                                               log_checkpoint=opts.log_checkpoint)
    except Exception as exc:
        log.exception("%s: logging the sweep to MLflow failed", result.model)
        result.notes.append(f"MLflow error, not an outage ({type(exc).__name__}: {exc}): the sign-off stands "
                            "and results are kept in the run directories; fix it, then run `qeval sync`")
        return
    if not result.tracking.get("synced", False):
        result.notes.append("MLflow was not reachable: results are kept in the run directories; "
                            "run `qeval sync` later")


def run_sweep(opts: SweepOptions) -> SweepResult:
    return run_sweeps([opts])[0]
