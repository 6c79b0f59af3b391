"""A sweep: one model, several schemes, every stage, then sign-off and tracking.

Everything that can be checked is checked before any work starts (names,
recipes, parameters, data files, tasks), so bad input fails fast with
nothing written. Each scheme's quantize+evaluate then runs in a fresh worker
process, and its benchmark in another, through an executor: ``local``
(sequential subprocesses) or ``ray`` (tasks on a Ray cluster). A scheme that
fails is reported as failed; the others go on.
"""

from __future__ import annotations

import difflib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.data import DataError, resolve_data_dir, spec
from pipelines import recipes as cfg
from pipelines.errors import QevalError, UnsupportedHere
from pipelines.quantizers.loading import resolve_device
from pipelines.recipes import user_files
from pipelines.recipes.models import resolve_compute, resolve_model
from pipelines.recipes.reachable import check_model_reachable
from pipelines.rundir import (
    Manifest,
    locked_json,
    model_dir,
    scheme_dir,
    stable_hash,
    write_text_atomic,
)
from pipelines.stages.common import StageContext

log = logging.getLogger(__name__)

PER_SCHEME_STAGES = ("quantize", "evaluate", "benchmark", "serve")


@dataclass
class SweepOptions:
    """What the command line may change on top of the recipes."""

    model: str
    schemes: list[str] | None = None
    suite: str | None = None
    tasks: list[str] | None = None
    limit: int | None = None
    tasks_dir: str | None = None
    data_dir: str | None = None
    prequantized: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)  # --hardware: wins over the model recipe's
    force: bool = False
    quiet: bool = False
    profile: bool = False
    executor: str = "local"
    experiment: str | None = None
    log_checkpoint: bool = False
    track: bool = True


@dataclass
class Plan:
    """The validated sweep: one resolved recipe per scheme."""

    model: str
    suite: str
    recipes: dict[str, cfg.ResolvedRecipe]
    skipped: dict[str, str]


def expand_schemes(requested: list[str]) -> list[str]:
    names = cfg.available("schemes")
    if requested == ["all"]:
        # A prequantized scheme evaluates a checkpoint the user names; "all" cannot pick one.
        from pipelines.quantizers import get_quantizer

        return [n for n in names if not get_quantizer(cfg.load_scheme(n).quantizer).prequantized]
    out = []
    for name in requested:
        if user_files.is_recipe_path(name):  # a user's own scheme file: its name is the file's
            out.append(user_files.register("schemes", name))
            continue
        if name not in names:
            raise QevalError(cfg.unknown_name_message("scheme", name, names)
                             + " (or give a path to your own scheme YAML file)")
        out.append(name)
    return out


def suite_with_overrides(suite: cfg.SuiteRecipe, opts: SweepOptions) -> cfg.SuiteRecipe:
    data = suite.model_dump()
    if opts.tasks is not None:
        data["tasks"]["names"] = opts.tasks
    if opts.limit is not None:
        data["tasks"]["limit"] = opts.limit
    if opts.tasks_dir:
        data["tasks"]["tasks_dir"] = opts.tasks_dir
    # The data directory is resolved once here and recorded in every recipe, so
    # workers, stage keys and provenance all see the same one.
    data_dir = opts.data_dir or suite.data_dir or os.environ.get("QEVAL_DATA_DIR")
    if data_dir:
        data["data_dir"] = str(resolve_data_dir(data_dir))
    if opts.profile:
        data["benchmark"]["profile"] = True
    data = cfg.deep_merge(data, opts.overrides)
    return cfg.validate(cfg.SuiteRecipe, data, "suite after command-line overrides")


def plan(opts: SweepOptions) -> Plan:
    """Resolve and validate every scheme's recipe; raise QevalError on bad input, write nothing."""
    from pipelines.quantizers import get_quantizer
    from pipelines.signoff import gates
    from pipelines.stages import quantize

    model = resolve_model(opts.model)
    commit = check_model_reachable(model)  # no network, gated, unknown id, bad path: exit 2 before any work
    if commit and commit != model.revision:  # pinned: a branch that moves mid-sweep changes nothing
        model = model.model_copy(update={"revision": commit, "requested_revision": model.revision or "main"})
    suite = suite_with_overrides(cfg.load_suite(opts.suite or model.default_suite), opts)
    schemes = expand_schemes(opts.schemes or suite.schemes)
    if "baseline" not in schemes:
        schemes = ["baseline", *schemes]  # every verdict is relative to it
    schemes = ["baseline", *[s for s in schemes if s != "baseline"]]
    gates.merge_gates(suite.gates, model.gates)
    check_context(model, suite)
    check_data(suite)
    # One compute dtype for the whole sweep, resolved here and written into every scheme's
    # recipe: the baseline and the schemes compute alike, and the workers never re-decide it.
    model = model.model_copy(update={"compute": resolve_compute(model, resolve_device(suite.device))})
    for warning in model.compute.warnings:
        log.warning("%s", warning)
    recipes, skipped = {}, {}
    for scheme in schemes:
        recipe = cfg.resolve_recipe(model, scheme, suite)
        if opts.hardware:
            from pipelines.recipes.serving import HardwareConfig, merge_section

            recipe.hardware = cfg.validate(HardwareConfig, merge_section(recipe.hardware.model_dump(), opts.hardware),
                                           "--hardware")
        if opts.prequantized and get_quantizer(recipe.scheme.quantizer).prequantized:
            recipe.scheme.source = opts.prequantized
        if recipe.scheme.baseline and recipe.scheme.baseline != model.name:
            raise QevalError(f"scheme {scheme} is compared against {recipe.scheme.baseline}, not {model.name}: "
                             f"run it with MODEL={recipe.scheme.baseline}")
        ctx = StageContext(model.name, scheme, recipe, scheme_dir(model.name, scheme))
        try:
            quantize.prepare(ctx)
        except UnsupportedHere as exc:
            skipped[scheme] = str(exc)
        recipes[scheme] = recipe
    if "baseline" in skipped:
        raise QevalError(f"the baseline cannot run here: {skipped['baseline']}")
    return Plan(model.name, suite.name, recipes, skipped)


def check_context(model: cfg.ModelRecipe, suite: cfg.SuiteRecipe) -> None:
    """An explicit perplexity window longer than the model's context is an error, not a silent cap."""
    seq_len = suite.perplexity.seq_len
    if seq_len is None:
        return
    from transformers import AutoConfig

    from pipelines.recipes.models import max_context, source_path

    config = AutoConfig.from_pretrained(source_path(model), revision=model.revision,
                                        trust_remote_code=model.trust_remote_code)
    context = max_context(config, model)
    if seq_len > context:
        raise QevalError(
            f"perplexity.seq_len {seq_len} is longer than {model.name}'s context ({context} tokens). "
            f"Set perplexity.seq_len <= {context} (or leave it unset for min(2048, context))."
        )


def check_data(suite: cfg.SuiteRecipe) -> None:
    """Every local data file the sweep will read must exist before anything starts."""
    task_data = task_datasets(suite.tasks.names, suite.tasks.tasks_dir)  # checks the tasks in any case
    check_task_limits(suite.tasks)
    data_dir = resolve_data_dir(suite.data_dir)
    if data_dir is None:
        return  # the Hub; failures surface when a stage loads the data
    needed = set(suite.perplexity.datasets) | {suite.calibration.dataset or "c4"} | task_data
    for name in sorted(needed):
        s = spec(name)
        for rel in filter(None, (s.local_file, s.labels_file)):
            if not (data_dir / rel).is_file():
                raise DataError(
                    f"dataset {name!r}: missing file {data_dir / rel}. Put it there, point QEVAL_DATA_DIR "
                    "at a folder that has it, or unset QEVAL_DATA_DIR to read it from the Hub."
                )


def check_task_limits(tasks: cfg.TasksConfig) -> None:
    """A per-task limit must name a task that runs (the harness's own rule, applied before any work)."""
    if not isinstance(tasks.limit, dict) or not tasks.names:
        return
    from evals.harness import discover_tasks, limits_by_task, resolve_names

    defs = discover_tasks(Path(tasks.tasks_dir).expanduser() if tasks.tasks_dir else None)
    limits_by_task(tasks.limit, resolve_names(tasks.names, defs))


def task_datasets(names: list[str], tasks_dir: str | None) -> set[str]:
    """Check that every task exists and its YAML reads; return the datasets the local ones read.

    Raises TaskError for an unknown task (listing the local ones) or a broken YAML (naming the file).
    """
    if not names:
        return set()
    from evals.harness import TASK_PREFIX, discover_tasks

    defs = discover_tasks(Path(tasks_dir).expanduser() if tasks_dir else None)
    datasets: set[str] = set()
    external = []
    for name in names:
        definition = defs.get(name) or defs.get(TASK_PREFIX + name)
        if definition is None:
            external.append(name)
        else:
            datasets |= set(definition.datasets)
    if external:
        check_lm_eval_tasks(external, defs)
    return datasets


def check_lm_eval_tasks(names: list[str], defs: dict) -> None:
    """Names that are not qeval's must be in lm-eval's own registry (whose data comes from the Hub)."""
    from lm_eval.tasks import TaskManager

    from evals.harness import TaskError

    known = set(TaskManager().all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        local = ", ".join(sorted(d.short_name for d in defs.values()))
        close = {n: difflib.get_close_matches(n, [d.short_name for d in defs.values()], n=1) for n in unknown}
        hints = "".join(f" Did you mean {c[0]!r} for {n!r}?" for n, c in close.items() if c)
        raise TaskError(f"unknown task(s) {', '.join(map(repr, unknown))}.{hints} Local tasks: {local}; "
                        "other names must be lm-eval task names (`lm_eval ls tasks`) or defined in --tasks-dir.")


def sweep_key(p: Plan) -> str:
    """What makes two sweeps the same sweep (same id, same MLflow runs): the recipes, without
    the paths of the data and task folders (their content is in the stage keys)."""
    exclude = {"data_dir": True, "tasks": {"tasks_dir"}}
    return stable_hash({"suite": p.suite,
                        "recipes": {s: r.model_dump(mode="json", exclude=exclude) for s, r in p.recipes.items()}})


def write_plan(p: Plan, opts: SweepOptions, only: list[str] | None = None) -> dict[str, Any]:
    """Write recipes, manifests and sweep.json; keep the sweep id (and MLflow runs) of an identical
    earlier sweep.

    With ``only`` (a single-stage command), write just those schemes' recipes and manifests and
    leave sweep.json's scheme list and id alone; sweep.json is created only when there is none.
    sweep.json and each manifest are changed under their file locks (concurrent sweeps).
    """
    sweep_path = model_dir(p.model) / "sweep.json"
    schemes = list(p.recipes) if only is None else [s for s in p.recipes if s in only]
    with locked_json(sweep_path) as sweep:
        if only is None or not sweep.get("sweep_id"):
            key = sweep_key(p)
            if sweep.get("key") != key:
                sweep.clear()
                sweep.update(sweep_id=time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6], key=key, mlflow={})
            sweep.update(model=p.model, suite=p.suite, schemes=schemes, started_at=time.time(),
                         executor=opts.executor, skipped={s: w for s, w in p.skipped.items() if s in schemes})
        sweep_id = sweep["sweep_id"]
    for scheme in schemes:
        recipe = p.recipes[scheme]
        sdir = scheme_dir(p.model, scheme)
        write_text_atomic(sdir.recipe_path, recipe.to_yaml())

        def change(data, scheme=scheme, recipe=recipe):
            data.update(model=p.model, scheme=scheme, variant=recipe.scheme.name,
                        quantizer=recipe.scheme.quantizer, sweep_id=sweep_id)
            if scheme in p.skipped:
                for stage in PER_SCHEME_STAGES:
                    data["stages"][stage] = {"status": "skipped", "error": p.skipped[scheme]}

        Manifest(sdir).update(change)
    return sweep
