"""The command line: parse arguments, call the pipeline, print. The only module that prints.

Exit codes (pipelines/errors.py): 0 every judged scheme passed, 1 a FAIL verdict, 2 bad input,
3 inconclusive, 4 incomplete (a stage failed or a scheme was not judged), 5 a crash.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from pipelines.errors import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_PASS
from pipelines.logconfig import configure_logging

BAD_INPUT = EXIT_BAD_INPUT

# The summary columns of `qeval compare` (a name ending in "." selects every metric with that prefix).
COMPARE_COLUMNS = [
    "scheme", "ppl.", "delta.ppl.", "acc.", "recovery.acc.", "mem.disk_gib", "mem.weights_gib",
    "mem.peak_gib", "speed.decode_tok_s.bs1.", "speed.ttft_ms.p50.bs1.", "speed.roofline_frac.bs1",
    "serve.capacity", "serve.goodput_rps", "serve.usd_per_m_tokens", "signoff",
]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _sweep_args(p: argparse.ArgumentParser, *, multi_scheme: bool = True) -> None:
    p.add_argument("--model", default=os.environ.get("MODEL") or "smollm2-135m",
                   help="recipe alias, Hub id or local checkpoint directory")
    if multi_scheme:
        p.add_argument("--schemes", type=_csv, help="comma-separated schemes, or 'all' (default: the suite's)")
    else:
        p.add_argument("--scheme", required=True)
    p.add_argument("--suite", help="suite recipe (default: the model's default_suite)")
    p.add_argument("--tasks", type=_csv, help="lm-eval tasks, comma-separated (overrides the suite)")
    p.add_argument("--limit", type=int, help="examples per task (overrides the suite's per-task limits)")
    p.add_argument("--tasks-dir", help="a directory of your own lm-eval task YAMLs")
    p.add_argument("--data-dir", help="local data directory (default: QEVAL_DATA_DIR, else the Hub)")
    p.add_argument("--prequantized", help="checkpoint (Hub id or path) for the prequantized scheme")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite field, e.g. --set perplexity.seq_len=512")
    p.add_argument("--endpoint", metavar="URL",
                   help="serve stage: drive load against this running OpenAI-compatible server")
    p.add_argument("--hardware", metavar="KEY=VALUE,...",
                   help="serve stage: the serving machine, e.g. name=c7a.large,price_per_hour=0.1,memory_gib=4 "
                        "(overrides the model recipe's hardware:)")
    p.add_argument("--force", action="store_true", default=_env_flag("FORCE"), help="rerun finished stages")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--profile", action="store_true", help="record a torch.profiler trace per scheme")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qeval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="quantize, evaluate, benchmark, sign off and track a sweep")
    _sweep_args(run)
    run.add_argument("--executor", choices=["local", "ray"], default=os.environ.get("EXECUTOR") or "local")
    run.add_argument("--experiment", help="MLflow experiment (default: qeval/<model>)")
    run.add_argument("--log-checkpoint", action="store_true", default=_env_flag("LOG_CHECKPOINT"),
                     help="also upload quantized checkpoints to MLflow (can be many GB)")
    run.add_argument("--no-track", action="store_true", help="skip MLflow logging")
    run.add_argument("--dry-run", action="store_true", help="print what the sweep would do (as `qeval plan`) and stop")

    pl = sub.add_parser("plan", help="what a sweep would run, what is cached and why, estimated time; writes nothing")
    _sweep_args(pl)
    pl.add_argument("--executor", choices=["local", "ray"], default=os.environ.get("EXECUTOR") or "local")
    pl.add_argument("--experiment", help="MLflow experiment (default: qeval/<model>)")
    pl.add_argument("--no-track", action="store_true", help="the sweep would skip MLflow logging")

    ls = sub.add_parser("list", help="models, schemes, suites or tasks, one line each")
    ls.add_argument("kind", choices=["models", "schemes", "suites", "tasks"])
    ls.add_argument("--tasks-dir", help="tasks: also list the task YAMLs in this directory")
    ls.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="schemes: check whether each runs on this device [auto]")

    for stage in ("quantize", "evaluate", "benchmark", "serve"):
        sp = sub.add_parser(stage, help=f"run the {stage} stage of one scheme")
        _sweep_args(sp, multi_scheme=False)

    so = sub.add_parser("signoff", help="rerun only the sign-off from existing results")
    so.add_argument("--model", default=os.environ.get("MODEL") or "smollm2-135m")
    so.add_argument("--scheme", type=_csv,
                    help="judge only these schemes (written to signoff-only-<schemes>.*, not tracked)")
    so.add_argument("--experiment", help="MLflow experiment (default: the sweep's own)")
    so.add_argument("--no-track", action="store_true", help="skip MLflow logging")

    tr = sub.add_parser("track", help="log a model's finished sweep to MLflow")
    tr.add_argument("--model", default=os.environ.get("MODEL") or "smollm2-135m")
    tr.add_argument("--experiment")
    tr.add_argument("--log-checkpoint", action="store_true", default=_env_flag("LOG_CHECKPOINT"))

    cmp_ = sub.add_parser("compare", help="scheme x metric table from MLflow, else from the run directories")
    cmp_.add_argument("--model", default=os.environ.get("MODEL") or "smollm2-135m")
    cmp_.add_argument("--sweep", help="sweep id (default: the latest)")
    cmp_.add_argument("--experiment")
    cmp_.add_argument("--format", choices=["markdown", "csv", "json"], default="markdown")
    cmp_.add_argument("--all-columns", action="store_true", help="every logged metric, not the summary")
    cmp_.add_argument("--from-runs", action="store_true",
                      help="read the run directories, not MLflow (the default when MLflow is unreachable)")

    sy = sub.add_parser("sync", help="upload results that could not reach the MLflow server")
    sy.add_argument("--model", help="one model (default: all under the runs root)")

    sub.add_parser("prepare", help="convert the embedded default model (done by make setup)")
    en = sub.add_parser("env", help="this machine: CPU, kernels, probe GFLOP/s, the compute dtype qeval picks, engines")
    en.add_argument("--model", default="smollm2-135m", help="whose shapes to probe and dtype to resolve")
    en.add_argument("--json", action="store_true", help="one JSON object, for scripts")

    be = sub.add_parser("bench-eval", help="perplexity stage vs a bare batched forward pass")
    be.add_argument("--model", default=os.environ.get("MODEL") or "smollm2-135m")
    be.add_argument("--seq-len", type=int, default=512)
    be.add_argument("--windows", type=int, default=8)
    be.add_argument("--batch-size", type=int, default=4)

    wk = sub.add_parser("worker", help=argparse.SUPPRESS)
    wk.add_argument("--model", required=True)
    wk.add_argument("--scheme", required=True)
    wk.add_argument("--stages", type=_csv, required=True)
    wk.add_argument("--force", action="store_true")
    wk.add_argument("--quiet", action="store_true")
    wk.add_argument("--profile", action="store_true")
    return parser


def _options(args: argparse.Namespace, schemes: list[str] | None):
    from pipelines.execution.plan import SweepOptions
    from pipelines.recipes import parse_set_overrides

    return SweepOptions(
        model=args.model, schemes=schemes, suite=args.suite, tasks=args.tasks, limit=args.limit,
        tasks_dir=args.tasks_dir, data_dir=args.data_dir, prequantized=args.prequantized,
        overrides=_serve_overrides(args, parse_set_overrides(split_set_items(args.set))), force=args.force,
        quiet=args.quiet, profile=args.profile, hardware=_hardware(getattr(args, "hardware", None)),
        executor=getattr(args, "executor", "local"), experiment=getattr(args, "experiment", None),
        log_checkpoint=getattr(args, "log_checkpoint", False), track=not getattr(args, "no_track", False),
    )


def _serve_overrides(args: argparse.Namespace, overrides: dict) -> dict:
    """--endpoint URL: the serve stage drives that server instead of starting one."""
    if getattr(args, "endpoint", None):
        serve = overrides.setdefault("serve", {})
        serve.update(engine="endpoint", endpoint=args.endpoint)
    return overrides


def _hardware(text: str | None) -> dict:
    """--hardware name=...,price_per_hour=...,memory_gib=... -> a dict (validated at planning)."""
    from pipelines.errors import QevalError

    out: dict = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise QevalError(f"--hardware {text!r}: {item!r} is not KEY=VALUE; e.g. "
                             "--hardware name=c7a.large,price_per_hour=0.1,memory_gib=4")
        out[key.strip()] = value.strip()
    return out


def cmd_run(args) -> int:
    from pipelines.execution.runner import run_sweeps

    if getattr(args, "dry_run", False):
        return cmd_plan(args)
    # MODEL=a,b runs one sweep per model; under Ray their schemes run in parallel.
    options = []
    for model in _csv(args.model):
        args.model = model
        options.append(_options(args, args.schemes))
    results = run_sweeps(options, announce=None if args.quiet else print)
    for result in results:
        print(result.summary())
    return worst_exit_code([r.exit_code for r in results])


def worst_exit_code(codes: list[int]) -> int:
    from pipelines.execution.runner import worst_exit_code as worst

    return worst(codes)


def cmd_stage(args) -> int:
    """One stage of one scheme. Writes only that scheme's recipe and manifest: the sweep's scheme
    list and id stay as they are (sweep.json is created only when there is none)."""
    from pipelines.execution.local import WORKER_OK, run_stages_in_process
    from pipelines.execution.plan import plan, write_plan

    opts = _options(args, [args.scheme])
    p = plan(opts)
    if args.scheme in p.skipped:
        from pipelines.errors import UnsupportedHere

        raise UnsupportedHere(f"scheme {args.scheme} cannot run here: {p.skipped[args.scheme]}")
    write_plan(p, opts, only=[args.scheme])
    code = run_stages_in_process(p.model, args.scheme, (args.command,), force=args.force, quiet=args.quiet,
                                 profile=args.profile)
    return EXIT_PASS if code == WORKER_OK else code


def cmd_signoff(args) -> int:
    from pipelines.execution.runner import signoff_table
    from pipelines.recipes.models import resolve_model
    from pipelines.rundir import model_dir, read_json
    from pipelines.stages import signoff

    model = resolve_model(args.model).name
    sweep = model_dir(model) / "sweep.json"
    if not sweep.is_file():
        from pipelines.errors import QevalError

        raise QevalError(f"no sweep for {model} under {model_dir(model)}: run `make quantize MODEL={args.model}` first")
    schemes = read_json(sweep)["schemes"]
    if args.scheme:
        unknown = sorted(set(args.scheme) - set(schemes))
        if unknown:
            from pipelines.errors import QevalError

            raise QevalError(f"scheme(s) {', '.join(unknown)} not in the sweep of {model}: {', '.join(schemes)}")
    result = signoff.run(model, schemes, only=args.scheme)
    print(signoff_table(result))
    print(f"report: {model_dir(model) / signoff.report_stem(args.scheme)}.html")
    if args.scheme:  # a subset's verdict is not the sweep's: MLflow keeps the sweep's
        print("not tracked: a sign-off of some schemes only (MLflow keeps the whole sweep's verdict)")
    elif not args.no_track:
        from pipelines import tracking

        # Re-logging the sweep uploads the new report and verdict tags to the same runs,
        # in the experiment the sweep was tracked in unless one is named.
        out = tracking.track_sweep(model, schemes, experiment=args.experiment)
        if not out["synced"]:
            print("MLflow was not reachable: run `qeval sync` later")
    return result["exit_code"]


def split_set_items(items: list[str]) -> list[str]:
    """``--set 'a=1 b=2'`` or ``--set 'a=1;b=2'`` (make's SET) as separate items; a space inside a
    YAML value (``benchmark={iters: 1, warmup: 0}``) does not split, since no ``key=`` follows it."""
    import re

    out = []
    for item in items:
        out += [part.strip() for part in re.split(r";|\s+(?=[\w.-]+=)", item) if part.strip()]
    return out


def cmd_plan(args) -> int:
    """Validate the sweep and print what it would do; nothing is written."""
    from pipelines.execution.preview import format_preview, preview

    for model in _csv(args.model):
        args.model = model
        print(format_preview(preview(_options(args, args.schemes))))
    return EXIT_PASS


def cmd_list(args) -> int:
    from pipelines.catalog import format_rows, rows_for

    print(format_rows(args.kind, rows_for(args.kind, tasks_dir=args.tasks_dir, device=args.device)))
    return EXIT_PASS


def cmd_track(args) -> int:
    from pipelines import tracking
    from pipelines.recipes.models import resolve_model
    from pipelines.rundir import model_dir, read_json

    model = resolve_model(args.model).name
    schemes = read_json(model_dir(model) / "sweep.json")["schemes"]
    out = tracking.track_sweep(model, schemes, experiment=args.experiment, log_checkpoint=args.log_checkpoint)
    print(f"parent run {out['parent_run_id']} ({'synced' if out['synced'] else 'NOT synced: run qeval sync'})")
    return 0


def cmd_compare(args) -> int:
    from pipelines import tracking
    from pipelines.recipes.models import resolve_model

    model = resolve_model(args.model).name
    rows, source = tracking.compare(model, sweep_id=args.sweep, experiment=args.experiment,
                                    from_runs=args.from_runs)
    # The source line stays out of csv/json on stdout, so they remain machine-readable.
    print(source, file=sys.stdout if args.format == "markdown" else sys.stderr)
    print(tracking.format_table(rows, args.format, columns=None if args.all_columns else COMPARE_COLUMNS))
    return 0


def cmd_sync(args) -> int:
    from pipelines import tracking

    out = tracking.sync(args.model)
    print(out)
    return 0


def cmd_prepare(_args) -> int:
    from pipelines.recipes import embedded as default_model

    print(default_model.prepare())
    return 0


def cmd_bench_eval(args) -> int:
    from pipelines.bench_eval import bench_eval

    print(bench_eval(args.model, seq_len=args.seq_len, n_windows=args.windows, batch_size=args.batch_size))
    return 0


def cmd_env(args) -> int:
    from pipelines.machine import main as env_main

    print(env_main(args.model, args.json))
    return 0


def cmd_worker(args) -> int:
    from pipelines.execution.local import run_stages_in_process

    return run_stages_in_process(args.model, args.scheme, tuple(args.stages), force=args.force,
                                 quiet=args.quiet, profile=args.profile)


COMMANDS = {
    "run": cmd_run, "quantize": cmd_stage, "evaluate": cmd_stage, "benchmark": cmd_stage, "serve": cmd_stage,
    "signoff": cmd_signoff, "track": cmd_track, "compare": cmd_compare, "sync": cmd_sync,
    "prepare": cmd_prepare, "bench-eval": cmd_bench_eval, "worker": cmd_worker, "plan": cmd_plan,
    "list": cmd_list, "env": cmd_env,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a bad argument exits 2 here, which is bad input
    configure_logging(getattr(args, "quiet", False))
    try:
        return _run_command(args)
    except (Exception, SystemExit) as exc:  # SystemExit: a library's sys.exit is no verdict either
        return _error_exit_code(exc)


def _run_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    # torch (here and in every worker it starts) and llama.cpp use one documented thread count;
    # set before torch is imported, which reads it once (pipelines.compute.thread_count).
    from pipelines.compute import thread_count

    os.environ["OMP_NUM_THREADS"] = str(thread_count())
    return COMMANDS[args.command](args)


def _error_exit_code(exc: BaseException) -> int:
    """Bad input exits 2 with its message; anything else, an import that fails included, is a
    crash (5): never 0, 1 or 3, which a release process reads as a verdict."""
    try:
        from pipelines.stages.common import BAD_INPUT_ERRORS
    except Exception:  # qeval itself cannot be imported: that is the crash to report
        BAD_INPUT_ERRORS = ()
    if isinstance(exc, BAD_INPUT_ERRORS):
        print(f"qeval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    traceback.print_exception(exc)
    what = f"SystemExit({exc.code!r}) from a library" if isinstance(exc, SystemExit) else type(exc).__name__
    print(f"qeval: crash: {what}: {exc} (an unexpected error, not a verdict; "
          f"exit code {EXIT_CRASH}; results written so far are kept)", file=sys.stderr)
    return EXIT_CRASH


if __name__ == "__main__":
    raise SystemExit(main())
