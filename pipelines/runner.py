"""Run a whole sweep: plan, per-scheme stages through an executor, sign-off, tracking."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.executors import WORKER_BAD_INPUT
from pipelines.rundir import Manifest, model_dir, read_json, scheme_dir, write_json_atomic
from pipelines.sweep import PER_SCHEME_STAGES, SweepOptions, plan, write_plan

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


def run_sweep(opts: SweepOptions) -> SweepResult:
    from pipelines.executors import run_local

    start = time.perf_counter()
    p = plan(opts)  # all validation; raises QevalError before anything is written
    sweep = write_plan(p, opts)
    schemes = list(p.recipes)
    runnable = [s for s in schemes if s not in p.skipped]
    flags = dict(force=opts.force, quiet=opts.quiet, profile=opts.profile)
    if opts.executor == "ray":
        from pipelines.ray_executor import run_ray

        codes = run_ray(p.model, runnable, **flags)
    else:
        codes = run_local(p.model, runnable, **flags)
    if any(c == WORKER_BAD_INPUT for c in codes.values()):
        log.error("a worker rejected its input; see the messages above")
    notes = [f"skipped {s}: {why}" for s, why in p.skipped.items()]
    notes += [f"FAILED {s}: see {scheme_dir(p.model, s).manifest_path}" for s, c in codes.items() if c]

    from pipelines.stages import signoff

    result = None
    exit_code = 1
    try:
        result = signoff.run(p.model, schemes)
        exit_code = result["exit_code"]
    except Exception as exc:  # no baseline, most likely; report it, keep every result
        notes.append(f"sign-off not possible: {exc}")
    sweep = read_json(model_dir(p.model) / "sweep.json")
    sweep["finished_at"] = time.time()
    write_json_atomic(model_dir(p.model) / "sweep.json", sweep)

    tracking = None
    if opts.track:
        from pipelines import tracking as tracking_mod

        tracking = tracking_mod.track_sweep(p.model, schemes, experiment=opts.experiment,
                                            log_checkpoint=opts.log_checkpoint)
        if not tracking.get("synced", False):
            notes.append("MLflow was not reachable: results are kept in the run directories; run `qeval sync` later")
    notes.append(f"results: {model_dir(p.model)}  report: {model_dir(p.model) / 'signoff.html'}")
    return SweepResult(p.model, schemes, codes, result, tracking, time.perf_counter() - start, exit_code, notes)
