"""Which schemes may be judged: every stage done, under the key it would have now.

A scheme's files are evidence only if each per-scheme stage (quantize,
evaluate, benchmark) finished under the key the current recipe, data, code and
environment give it. Anything else (a failed or skipped stage, one still
running or killed, a stage whose recipe or code changed since it ran, outputs
deleted by hand) leaves old files behind that describe another run: such a
scheme is NOT JUDGED, with the reason, and its files are never read.

The caller computes the current keys (``pipelines.stages.keys.stage_keys``,
one rank above this package) and passes them in.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipelines.rundir import Manifest

STAGES = ("quantize", "evaluate", "benchmark", "serve")
# serve: a scheme its engine cannot serve is a recorded skip, not missing evidence; a run directory
# from before the stage existed has no entry and is judged without serving numbers.
MAY_SKIP = ("serve",)
_ERROR_CHARS = 300  # enough for the message; the manifest keeps the traceback


def not_judged_reason(manifest: Manifest, current_keys: Mapping[str, str]) -> str | None:
    """Why this scheme cannot be judged, one clause per unfinished stage; None when it can."""
    problems = []
    for stage in STAGES:
        entry = manifest.stage(stage)
        status = entry.get("status")
        if status is None and stage in MAY_SKIP:
            continue
        if status == "skipped" and stage in MAY_SKIP:
            continue
        if status is None:
            problems.append(f"{stage}: not run")
        elif status == "done":
            if entry.get("key") != current_keys.get(stage):
                problems.append(f"{stage}: stale (recipe or code changed since it ran)")
            elif not manifest.is_done(stage, current_keys[stage]):
                problems.append(f"{stage}: outputs missing (deleted since it ran)")
        elif status in ("failed", "skipped"):
            problems.append(f"{stage}: {status}: {_first_line(entry.get('error'))}")
        elif status == "running":
            problems.append(f"{stage}: running, or killed before it finished")
        else:
            problems.append(f"{stage}: {status}")
    return "; ".join(problems) or None


def _first_line(error: str | None) -> str:
    text = (error or "").strip()
    line = text.splitlines()[0] if text else "no error recorded"
    return line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 1] + "…"
