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
from pipelines.recipes.models import resolve_model
from pipelines.rundir import (
    Manifest,
    model_dir,
    read_json,
    scheme_dir,
    stable_hash,
    write_json_atomic,
    write_text_atomic,
)
from pipelines.stages.common import StageContext

log = logging.getLogger(__name__)

PER_SCHEME_STAGES = ("quantize", "evaluate", "benchmark")


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
        return [n for n in names if n != "prequantized"]
    for name in requested:
        if name not in names:
            raise QevalError(cfg.unknown_name_message("scheme", name, names))
    return requested


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
    from pipelines.signoff import gates
    from pipelines.stages import quantize

    model = resolve_model(opts.model)
    suite = suite_with_overrides(cfg.load_suite(opts.suite or model.default_suite), opts)
    schemes = expand_schemes(opts.schemes or suite.schemes)
    if "baseline" not in schemes:
        schemes = ["baseline", *schemes]  # every verdict is relative to it
    schemes = ["baseline", *[s for s in schemes if s != "baseline"]]
    gates.merge_gates(suite.gates, model.gates)
    check_context(model, suite)
    check_data(suite)
    recipes, skipped = {}, {}
    for scheme in schemes:
        recipe = cfg.resolve_recipe(model, scheme, suite)
        if recipe.scheme.quantizer == "prequantized" and opts.prequantized:
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

    context = max_context(AutoConfig.from_pretrained(source_path(model), revision=model.revision), model)
    if seq_len > context:
        raise QevalError(
            f"perplexity.seq_len {seq_len} is longer than {model.name}'s context ({context} tokens). "
            f"Set perplexity.seq_len <= {context} (or leave it unset for min(2048, context))."
        )


def check_data(suite: cfg.SuiteRecipe) -> None:
    """Every local data file the sweep will read must exist before anything starts."""
    task_data = task_datasets(suite.tasks.names, suite.tasks.tasks_dir)  # checks the tasks in any case
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


def write_plan(p: Plan, opts: SweepOptions) -> dict[str, Any]:
    """Write recipes and sweep.json; keep the sweep id (and MLflow runs) of an identical earlier sweep."""
    mdir = model_dir(p.model)
    sweep_path = mdir / "sweep.json"
    key = stable_hash({"suite": p.suite, "recipes": {s: r.model_dump(mode="json") for s, r in p.recipes.items()}})
    previous = read_json(sweep_path) if sweep_path.is_file() else {}
    sweep = previous if previous.get("key") == key else {
        "sweep_id": time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6],
        "key": key,
        "mlflow": {},
    }
    sweep.update(model=p.model, suite=p.suite, schemes=list(p.recipes), started_at=time.time(),
                 executor=opts.executor, skipped=p.skipped)
    for scheme, recipe in p.recipes.items():
        sdir = scheme_dir(p.model, scheme)
        write_text_atomic(sdir.recipe_path, recipe.to_yaml())
        manifest = Manifest(sdir)
        manifest.data.update(model=p.model, scheme=scheme, variant=recipe.scheme.name,
                             quantizer=recipe.scheme.quantizer, sweep_id=sweep["sweep_id"])
        if scheme in p.skipped:
            for stage in PER_SCHEME_STAGES:
                manifest.data["stages"][stage] = {"status": "skipped", "error": p.skipped[scheme]}
        manifest.save()
    write_json_atomic(sweep_path, sweep)
    return sweep
