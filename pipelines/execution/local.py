"""Executors run the per-scheme stages of a sweep; the stage functions are the same in all.

``local`` runs each scheme's quantize+evaluate in one fresh worker process and
its benchmark in another, one scheme after the other. A fresh process gives
each scheme clean memory and caches, an honest peak RSS, and isolation from a
native crash in one library.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from pipelines.errors import EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_PASS

log = logging.getLogger(__name__)

# Worker exit codes: the CLI's own codes, so `qeval worker` and `qeval quantize` mean the same.
# Anything else (a crash: 5, a signal: negative) also fails the scheme.
WORKER_OK, WORKER_FAILED, WORKER_BAD_INPUT = EXIT_PASS, EXIT_INCOMPLETE, EXIT_BAD_INPUT

# serve runs in the benchmark's process, after it: the benchmark has freed its model by then and
# the engine server is a process of its own, so nothing is shared but the worker's start-up.
STAGE_GROUPS = (("quantize", "evaluate"), ("benchmark", "serve"))


def worker_command(model: str, scheme: str, stages: tuple[str, ...], *, force: bool, quiet: bool,
                   profile: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pipelines", "worker", "--model", model, "--scheme", scheme,
           "--stages", ",".join(stages)]
    cmd += ["--force"] * force + ["--quiet"] * quiet + ["--profile"] * profile
    return cmd


def run_worker(model: str, scheme: str, stages: tuple[str, ...], **flags) -> int:
    """Run stages of one scheme in a fresh Python process; return its exit code."""
    cmd = worker_command(model, scheme, stages, **flags)
    log.info("%s/%s: %s", model, scheme, " -> ".join(stages))
    return subprocess.run(cmd, env=os.environ.copy(), check=False).returncode


Job = tuple[str, str]  # (model, scheme)


def group_is_cached(model: str, scheme: str, stages: tuple[str, ...], *, threads: int | None = None,
                    profile: bool = False) -> bool:
    """True when every stage of the group finished with the key it would have now.

    Checked here so that a cached rerun does not start a worker process just to find
    nothing to do. ``threads``: torch's thread count the worker will have, where it is not
    this process's (a Ray task's CPUs). The worker checks the keys again in any case.
    """
    from pipelines.errors import QevalError
    from pipelines.rundir import Manifest, scheme_dir
    from pipelines.stages.common import StageContext
    from pipelines.stages.keys import stage_keys

    try:
        ctx = StageContext.from_run_dir(model, scheme, profile=profile)
    except QevalError:
        return False  # no recipe yet: nothing can be cached
    manifest = Manifest(scheme_dir(model, scheme))
    keys = stage_keys(ctx, threads)
    return all(manifest.is_done(stage, keys[stage]) for stage in stages)


def run_local(jobs: list[Job], *, force: bool = False, **flags) -> dict[Job, int]:
    """Run every job's stage groups one after the other; a failed group stops only its scheme."""
    codes: dict[Job, int] = {}
    for model, scheme in jobs:
        code = WORKER_OK
        for group in STAGE_GROUPS:
            if not force and group_is_cached(model, scheme, group, profile=flags.get("profile", False)):
                log.info("%s/%s: %s up to date", model, scheme, " -> ".join(group))
                continue
            code = run_worker(model, scheme, group, force=force, **flags)
            if code != WORKER_OK:
                break
        codes[(model, scheme)] = code
    return codes


def run_stages_in_process(model: str, scheme: str, stages: tuple[str, ...], *, force: bool = False,
                          quiet: bool = False, profile: bool = False) -> int:
    """The worker body: run ``stages`` of one scheme here; return a worker exit code.

    Holds the scheme's stage lock while it runs, so a second sweep (or a stage command) of
    the same scheme waits, then finds the stages finished under their keys and skips them:
    each stage runs once, and no two processes write one checkpoint.
    """
    from filelock import Timeout

    from pipelines.rundir import file_lock, scheme_dir

    lock = file_lock(scheme_dir(model, scheme).root / ".stages", timeout_s=-1)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s/%s: another process is running this scheme's stages; waiting for it", model, scheme)
        lock.acquire()
    try:
        return _run_stages_locked(model, scheme, stages, force=force, quiet=quiet, profile=profile)
    finally:
        lock.release()


def _run_stages_locked(model: str, scheme: str, stages: tuple[str, ...], *, force: bool, quiet: bool,
                       profile: bool) -> int:
    from pipelines.compute import apply_threads
    from pipelines.rundir import Manifest
    from pipelines.stages import benchmark, evaluate, quantize, serve
    from pipelines.stages.common import StageContext

    # The thread count the parent planned with (one intra-op pool of QEVAL_THREADS or the
    # physical cores, one inter-op thread): a worker never oversubscribes the cores.
    apply_threads()
    functions = {"quantize": quantize.run, "evaluate": evaluate.run, "benchmark": benchmark.run, "serve": serve.run}
    ctx = StageContext.from_run_dir(model, scheme, force=force, show_progress=not quiet, profile=profile)
    for stage in stages:
        if stage != "quantize":
            quantized = Manifest(ctx.sdir).stage("quantize").get("status")
            if quantized == "skipped":
                return WORKER_OK  # recorded as skipped by the plan or the quantize stage
            if quantized != "done":
                log.error("%s/%s: %s needs a finished quantize stage (it is %s)", model, scheme, stage, quantized)
                return WORKER_FAILED
        status = functions[stage](ctx)
        if status == "failed":
            return WORKER_FAILED
        # skipped is not a failure: the next stage runs (a skipped quantize stops it above)
    return WORKER_OK
