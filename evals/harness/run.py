"""Running lm-eval in-process on an already-loaded model, and the CLI command that reproduces it.

One ``lm_eval.simple_evaluate`` call per distinct limit (lm-eval's limit is global to a
call); the results and samples of all calls are merged, reported under the names asked
for, and written through ``TasksResult`` (tasks.json) and :func:`samples.write_samples`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evals.flips import mde_points
from evals.generation import (
    annotate_truncation,
    collapse_summary,
    decoding,
    is_generative,
    recorded_settings,
)
from evals.harness.definitions import (
    TASK_PREFIX,
    Selection,
    TaskDefinition,
    TaskError,
    discover_tasks,
    resolve_names,
    task_closure,
    unknown_task_error,
)
from evals.harness.render import materialise_dataset, render_tasks
from evals.harness.samples import metric_results, plain, sample_rows, task_provenance, write_samples

log = logging.getLogger(__name__)

RENDERED_DIR_NAME = "task_defs"
# lm-eval's own defaults (lm_eval.utils DEFAULT_RANDOM_SEED / DEFAULT_OTHER_SEED), set explicitly
# so a run is reproducible and equal to the `lm_eval` CLI's.
SEEDS = {
    "random_seed": 0,
    "numpy_random_seed": 1234,
    "torch_random_seed": 1234,
    "fewshot_random_seed": 1234,
}
# lm-eval modules that import tqdm by name; patched while progress is silenced.
_TQDM_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


def limits_by_task(
    limit: int | dict[str, int | None] | None, sel: Selection
) -> dict[str, int | None]:
    """Map each lm-eval task name to its limit; keys of a dict may be short or full names."""

    def check(value: Any, where: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TaskError(f"limit{where} must be a positive integer or None, not {value!r}")
        return value

    names = sel.local + sel.external
    if not isinstance(limit, dict):
        value = check(limit, "")
        return dict.fromkeys(names, value)
    known = set()
    for name in names:
        known |= {name, name.removeprefix(TASK_PREFIX), sel.requested_by_lm_name[name]}
    stray = set(limit) - known
    if stray:
        raise TaskError(
            f"limit names task(s) {sorted(stray)} that are not being run ({', '.join(names)})"
        )
    out = {}
    for name in names:
        keys = (sel.requested_by_lm_name[name], name, name.removeprefix(TASK_PREFIX))
        value = next((limit[k] for k in keys if k in limit), None)
        out[name] = check(value, f"[{name!r}]")
    return out


@contextlib.contextmanager
def _quiet(show_progress: bool) -> Iterator[None]:
    """Silence lm-eval's and datasets' progress bars, info logs and prints when asked."""
    if show_progress:
        yield
        return
    import importlib

    import datasets
    import tqdm as tqdm_package
    from tqdm import tqdm as real_tqdm

    def silent_tqdm(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return real_tqdm(*args, **kwargs)

    # lm-eval's metrics module imports tqdm inside the bootstrap function, hence the package too.
    modules = [tqdm_package] + [importlib.import_module(m) for m in _TQDM_MODULES]
    saved = [(m, m.tqdm) for m in modules if hasattr(m, "tqdm")]
    lm_logger = logging.getLogger("lm_eval")
    level = lm_logger.level
    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    lm_logger.setLevel(logging.WARNING)
    try:
        for module, _ in saved:
            module.tqdm = silent_tqdm
        # lm-eval prints "bootstrapping for stddev" (lambada's perplexity stderr) to stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for module, original in saved:
            module.tqdm = original
        lm_logger.setLevel(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


class _LoadedModelWarnings(logging.Filter):
    """Drop HFLM's two warnings about being given a loaded model: qeval does that on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(("`pretrained` model kwarg", "Passed an already-initialized"))


@contextlib.contextmanager
def _without_loaded_model_warnings() -> Iterator[None]:
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    quiet = _LoadedModelWarnings()
    hf_logger.addFilter(quiet)
    try:
        yield
    finally:
        hf_logger.removeFilter(quiet)


def _load_task(manager: Any, name: str, *, external: bool, defs: dict[str, TaskDefinition]) -> Any:
    """Build one task or group; an lm-eval task whose data cannot be fetched gets a clear error."""
    if not external:
        return manager.load([name])
    try:
        return manager.load([name])
    except Exception as exc:
        local = ", ".join(sorted(d.short_name for d in defs.values()))
        raise TaskError(
            f"lm-eval task {name!r} could not be loaded: {type(exc).__name__}: {exc}. lm-eval's "
            f"own tasks read their data from the Hugging Face Hub; without it, use the local "
            f"tasks ({local}) or define the task in a tasks_dir."
        ) from exc


def lm_eval_command(
    *, pretrained: str, tokenizer: str | None, dtype: str, device: str, batch_size: int,
    max_length: int | None, include_path: Path, tasks: list[str], limit: int | None,
) -> str:
    """Return the `lm_eval` command line that scores ``tasks`` as :func:`run_tasks` did.

    The model arguments carry the dtype (in bf16 answers can flip with the batch size) and
    the context length; ``--seed`` is :data:`SEEDS` in the CLI's order.
    """
    model_args = [f"pretrained={pretrained}", f"dtype={dtype}"]
    if tokenizer:
        model_args.append(f"tokenizer={tokenizer}")
    if max_length:
        model_args.append(f"max_length={max_length}")
    argv = [
        "lm_eval", "--model", "hf", "--model_args", ",".join(model_args), "--device", device,
        "--tasks", ",".join(tasks), "--include_path", str(include_path), "--batch_size", str(batch_size),
        "--seed", ",".join(str(v) for v in SEEDS.values()),
    ]
    if limit is not None:
        argv += ["--limit", str(limit)]
    return shlex.join(argv)


def run_tasks(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    *,
    out_dir: Path,
    data_dir: Path | None,
    tasks_dir: Path | None = None,
    limit: int | dict[str, int | None] | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    show_progress: bool = True,
    pretrained: str | None = None,
    tokenizer_source: str | None = None,
    generation: dict | None = None,
) -> dict:
    """Score a loaded model on tasks with lm-eval; write tasks.json and samples; return tasks.json's dict.

    ``pretrained`` and ``tokenizer_source`` only go into the recorded `lm_eval` commands:
    where the checkpoint and tokenizer load from (default: the model's ``name_or_path``).
    """
    from evals.results import TasksResult

    started = time.perf_counter()
    if isinstance(tasks, str) or not tasks:
        raise TaskError(f"tasks must be a non-empty list of task names, not {tasks!r}")
    out_dir = Path(out_dir)
    defs = discover_tasks(tasks_dir)
    sel = resolve_names(list(tasks), defs)
    limits = limits_by_task(limit, sel)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # Materialise only what the selected tasks read: with the Hub as source, others may be far.
    data_paths, prov_by_dataset = {}, {}
    needed = {ds for name in task_closure(sel.local, defs) for ds in defs[name].datasets}
    for dataset in sorted(needed):
        data_paths[dataset], prov_by_dataset[dataset] = materialise_dataset(dataset, data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = render_tasks(defs, sel.local, data_paths, out_dir / RENDERED_DIR_NAME)

    # lm-eval's own index takes seconds to build: only when a name is not one of ours.
    with _quiet(show_progress):
        manager = TaskManager(include_path=str(rendered), include_defaults=bool(sel.external))
    unknown = [n for n in sel.external if n not in manager.all_tasks]
    if unknown:
        raise unknown_task_error([sel.requested_by_lm_name[n] for n in unknown], defs)

    if hasattr(model, "lm_eval_model"):  # another engine's scorer (llama.cpp) wraps itself
        wrapped = model.lm_eval_model(tokenizer, batch_size=batch_size, max_length=max_length)
    else:
        with _without_loaded_model_warnings():
            wrapped = HFLM(
                pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length
            )
    gen_args = decoding(tokenizer, generation)
    repeats = int((generation or {}).get("repeats") or 1)
    evaluated, task_objects, leaf_limit, calls = _evaluate_by_limit(
        lm_eval, wrapped, manager, limits, sel, defs, show_progress, gen_args, repeats
    )
    generated: dict[str, Any] = {}

    # Report in the order asked, under the names asked (arc_easy, not qeval_arc_easy).
    order = {name: i for i, name in enumerate(sel.requested_by_lm_name)}
    for key in ("results", "n-samples"):
        evaluated[key] = dict(
            sorted(evaluated[key].items(), key=lambda kv: order.get(kv[0], len(order)))
        )
    report = {name: sel.requested_by_lm_name.get(name, name) for name in evaluated["results"]}
    n_samples, sample_files = {}, {}
    for lm_name, samples in evaluated["samples"].items():
        path = out_dir / "samples" / f"{report.get(lm_name, lm_name)}.jsonl"
        rows = sample_rows(task_objects.get(lm_name), samples)
        task = task_objects.get(lm_name)
        if task is not None and is_generative(task):  # decoding settings and collapse detectors
            settings = recorded_settings(task, gen_args, repeats)
            annotate_truncation(rows, tokenizer, settings["generation_kwargs"].get("max_gen_toks"))
            generated[report.get(lm_name, lm_name)] = {**settings, "collapse": collapse_summary(rows)}
        write_samples(path, rows)
        sample_files[report.get(lm_name, lm_name)] = str(path.relative_to(out_dir))
    for lm_name, counts in evaluated["n-samples"].items():
        n_samples[report.get(lm_name, lm_name)] = int(
            counts.get("effective", counts.get("original", 0))
        )

    dtype = str(getattr(model, "dtype", "unknown")).removeprefix("torch.")
    commands = [
        lm_eval_command(
            pretrained=pretrained or str(getattr(model, "name_or_path", "") or "<checkpoint>"),
            tokenizer=tokenizer_source, dtype=dtype, device=str(wrapped.device), batch_size=batch_size,
            max_length=wrapped.max_length, include_path=rendered, tasks=names, limit=value,
        )
        for value, names in calls
    ]
    result = TasksResult(
        results={report[name]: plain(metric_results(raw)) for name, raw in evaluated["results"].items()},
        n_samples=n_samples,
        limit={report[name]: leaf_limit.get(name, limits.get(name)) for name in evaluated["results"]},
        lm_eval_version=lm_eval.__version__,
        tasks_dir=str(rendered),
        lm_eval_tasks={report[name]: name for name in evaluated["results"]},
        provenance=plain({
            report.get(name, name): task_provenance(task, defs, name, prov_by_dataset)
            for name, task in task_objects.items()
        }),
        samples=sample_files,
        settings={"batch_size": batch_size, "max_length": wrapped.max_length, "seeds": SEEDS},
        duration_s=round(time.perf_counter() - started, 3),
        dtype=dtype,
        lm_eval_commands=commands,
        generation=plain(generated),
        mde_points={task: mde_points(n) for task, n in n_samples.items()},
    )
    result.write(out_dir / TasksResult.FILE)
    return result.to_dict()


def _evaluate_by_limit(
    lm_eval: Any, wrapped: Any, manager: Any, limits: dict[str, int | None], sel: Selection,
    defs: dict[str, TaskDefinition], show_progress: bool, gen_args: dict[str, Any] | None = None,
    repeats: int = 1,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int | None], list[tuple[int | None, list[str]]]]:
    """Run one simple_evaluate per distinct limit; return merged results, task objects, limits and calls."""
    evaluated: dict[str, Any] = {"results": {}, "n-samples": {}, "samples": {}}
    task_objects: dict[str, Any] = {}
    leaf_limit: dict[str, int | None] = {}
    calls: list[tuple[int | None, list[str]]] = []
    for value in sorted(set(limits.values()), key=lambda v: (v is None, v or 0)):
        names = [n for n in limits if limits[n] == value]
        calls.append((value, names))
        log.info("lm-eval: %s (limit %s)", ", ".join(names), value)
        with _quiet(show_progress):
            specs = []
            for name in names:
                loaded = _load_task(manager, name, external=name in sel.external, defs=defs)
                task_objects.update(loaded["tasks"])
                leaf_limit.update(dict.fromkeys(loaded["tasks"], value))
                groups = loaded.get("groups") or {}
                specs.extend([groups[name]] if name in groups else loaded["tasks"].values())
            # Generative tasks run apart: the chat template and decoding settings are theirs only.
            gen_specs = [t for t in specs if is_generative(t)]
            parts = [(p, {}) for p in [[t for t in specs if not is_generative(t)]] if p]
            if gen_specs:
                for task in gen_specs:
                    task.set_config(key="repeats", value=repeats)
                parts.append((gen_specs, gen_args or {}))
            results = [
                lm_eval.simple_evaluate(
                    model=wrapped,
                    tasks=part,
                    task_manager=manager,
                    limit=value,
                    log_samples=True,
                    **SEEDS,
                    **extra,
                )
                for part, extra in parts
            ]
        for result in results:
            for key in evaluated:
                evaluated[key].update(result.get(key) or {})
    return evaluated, task_objects, leaf_limit, calls
