"""Task accuracy through lm-eval, in-process, on task definitions that ship with qeval.

qeval's YAMLs (``evals/tasks/qeval_*.yaml``) score exactly like lm-eval 0.4.13's own
hellaswag, arc_easy, arc_challenge, piqa, winogrande and lambada_openai, but read their
rows from a JSONL named by a placeholder, ``__QEVAL_TASK_DATA__/<dataset>.jsonl``, where
``<dataset>`` is a name known to :mod:`evals.data`. For a run, the harness

1. reads and checks every YAML (built-in and the user's ``tasks_dir``),
2. materialises each dataset a selected task names (local data folder or the Hub, through
   ``evals.data.load_records``) into a content-addressed JSONL in the cache,
3. renders the YAMLs into ``out_dir/task_defs`` with the placeholders replaced, so that the
   folder works as-is with ``lm_eval --include_path``,
4. runs ``lm_eval.simple_evaluate`` on the already-loaded model, one call per distinct limit,
5. writes ``tasks.json`` and ``samples/<task>.jsonl`` atomically.

Short names (``arc_easy``) map to qeval's tasks (``qeval_arc_easy``); any other name is passed
to lm-eval's own task registry (which needs the Hub for its data).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evals import data as eval_data
from pipelines.rundir.atomic import write_bytes_atomic

log = logging.getLogger(__name__)

TASK_PREFIX = "qeval_"
DATA_PLACEHOLDER = "__QEVAL_TASK_DATA__"
_PLACEHOLDER_RE = re.compile(re.escape(DATA_PLACEHOLDER) + r"/([A-Za-z0-9_.-]+?)\.jsonl")
BUILTIN_TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
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


class TaskError(ValueError):
    """A task name, definition or limit is wrong; the message names the fix."""


@dataclass(frozen=True)
class TaskDefinition:
    """One task (or group) YAML: its lm-eval name, file and the datasets its placeholders name."""

    name: str
    path: Path
    root: Path
    datasets: tuple[str, ...]
    members: tuple[str, ...] = ()  # task names a group lists

    @property
    def short_name(self) -> str:
        return self.name.removeprefix(TASK_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "datasets": list(self.datasets)}


@dataclass
class _Selection:
    """Requested names resolved to lm-eval names; which ones are qeval's."""

    local: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    requested_by_lm_name: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- YAML reading


class _TolerantLoader(yaml.SafeLoader):
    """Safe loader that keeps unknown tags (lm-eval's ``!function``) as their plain value."""


def _construct_tagged(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_TolerantLoader.add_multi_constructor("!", _construct_tagged)


def read_task_yaml(path: Path) -> dict[str, Any]:
    """Parse one task YAML safely, tolerating ``!function`` tags; raise TaskError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.load(f, Loader=_TolerantLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TaskError(
            f"task file {path} is not valid YAML: {exc}. Fix the file or remove it from its folder."
        ) from exc
    except OSError as exc:
        raise TaskError(f"task file {path} cannot be read: {exc}") from exc
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise TaskError(
            f"task file {path} must hold a YAML mapping (task: ..., dataset_path: ...), not a {type(cfg).__name__}."
        )
    return cfg


def _included_files(path: Path, cfg: dict[str, Any]) -> list[Path]:
    includes = cfg.get("include")
    if includes is None:
        return []
    out = []
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str):
            raise TaskError(
                f"task file {path}: include must be a file name or a list of them, not {inc!r}"
            )
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if not inc_path.is_file():
            raise TaskError(
                f"task file {path} includes {inc!r}, which does not exist at {inc_path}."
            )
        out.append(inc_path.resolve())
    return out


def _placeholder_datasets(path: Path) -> set[str]:
    names = set(_PLACEHOLDER_RE.findall(path.read_text(encoding="utf-8")))
    unknown = names - set(eval_data.DATASETS)
    if unknown:
        raise TaskError(
            f"task file {path} names unknown dataset(s) {sorted(unknown)} in {DATA_PLACEHOLDER}/<dataset>.jsonl. "
            f"Known datasets: {', '.join(eval_data.dataset_names())}."
        )
    return names


def _scan_dir(root: Path) -> tuple[dict[str, TaskDefinition], set[Path]]:
    """Read every ``*.yaml`` under root (as lm-eval's index does); return tasks and included files."""
    defs: dict[str, TaskDefinition] = {}
    included: set[Path] = set()
    for path in sorted(root.rglob("*.yaml"), key=lambda p: p.as_posix()):
        if "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue
        cfg = read_task_yaml(path)
        datasets = _placeholder_datasets(path)
        seen = {path.resolve()}
        stack = _included_files(path, cfg)
        while stack:  # datasets named in included files count for the including task
            inc = stack.pop()
            if inc in seen:
                raise TaskError(f"task file {path}: include cycle through {inc}")
            seen.add(inc)
            included.add(inc)
            datasets |= _placeholder_datasets(inc)
            stack.extend(_included_files(inc, read_task_yaml(inc)))
        name, members = _task_name(cfg)
        if name is None:
            continue  # a template that other files include
        if name in defs:
            raise TaskError(
                f"task {name!r} is defined twice: in {defs[name].path} and in {path}. Rename one."
            )
        defs[name] = TaskDefinition(
            name, path.resolve(), root.resolve(), tuple(sorted(datasets)), members
        )
    return defs, included


def _task_name(cfg: dict[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    if isinstance(cfg.get("group"), str):
        tasks = cfg.get("task") or []
        members = tuple(t for t in tasks if isinstance(t, str)) if isinstance(tasks, list) else ()
        return cfg["group"], members
    if isinstance(cfg.get("task"), str):
        return cfg["task"], ()
    return None, ()


def discover_tasks(tasks_dir: Path | None = None) -> dict[str, TaskDefinition]:
    """Return qeval's task definitions plus those in tasks_dir (which win on a name clash)."""
    defs, _ = _scan_dir(BUILTIN_TASKS_DIR)
    if tasks_dir is not None:
        tasks_dir = Path(tasks_dir)
        if not tasks_dir.is_dir():
            raise TaskError(
                f"tasks_dir {tasks_dir} is not a folder. Point it at a folder of lm-eval task YAMLs."
            )
        user_defs, _ = _scan_dir(tasks_dir)
        if not user_defs:
            raise TaskError(
                f"tasks_dir {tasks_dir} holds no task YAML (a *.yaml file with a `task:` key)."
            )
        for name in user_defs.keys() & defs.keys():
            log.info("task %s from %s replaces qeval's own definition", name, user_defs[name].path)
        defs.update(user_defs)
    return defs


def local_task_names(tasks_dir: Path | None = None) -> list[str]:
    """Names users can pass for the local tasks (short names for qeval's own)."""
    return sorted(d.short_name for d in discover_tasks(tasks_dir).values())


def _resolve(tasks: list[str], defs: dict[str, TaskDefinition]) -> _Selection:
    sel = _Selection()
    for requested in tasks:
        if not isinstance(requested, str) or not requested:
            raise TaskError(f"task names must be non-empty strings, not {requested!r}")
        if requested in defs:
            lm_name = requested
        elif TASK_PREFIX + requested in defs:
            lm_name = TASK_PREFIX + requested
        else:
            lm_name = None
        key = lm_name or requested
        if key in sel.requested_by_lm_name:
            continue  # asked twice (e.g. arc_easy and qeval_arc_easy)
        sel.requested_by_lm_name[key] = requested
        (sel.local if lm_name else sel.external).append(key)
    return sel


def _unknown_task_error(names: list[str], defs: dict[str, TaskDefinition]) -> TaskError:
    local = ", ".join(sorted(d.short_name for d in defs.values()))
    return TaskError(
        f"unknown task(s) {', '.join(repr(n) for n in names)}. Local tasks: {local} "
        f"(also accepted with the {TASK_PREFIX!r} prefix). Other names must be lm-eval task names "
        "(`lm_eval ls tasks`), or tasks defined in a tasks_dir."
    )


# ----------------------------------------------------------------------------- data and rendering


def task_data_dir() -> Path:
    """Where materialised task rows live (``$QEVAL_CACHE_DIR/task_data``, default ``.cache/``)."""
    return Path(os.environ.get("QEVAL_CACHE_DIR", PROJECT_ROOT / ".cache")).resolve() / "task_data"


def materialise_dataset(name: str, data_dir: Path | None) -> tuple[Path, dict[str, Any]]:
    """Write the rows of one dataset to a content-addressed JSONL; return its path and provenance."""
    import hashlib

    rows, provenance = eval_data.load_records(name, data_dir)
    payload = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode(
        "utf-8"
    )
    digest = hashlib.sha256(payload).hexdigest()
    path = task_data_dir() / f"{name}-{digest[:16]}.jsonl"
    # The same content keeps the same path, so the datasets cache lm-eval builds is reused.
    if not path.is_file():
        write_bytes_atomic(path, payload)
    return path, {
        **provenance,
        "dataset": name,
        "rows": len(rows),
        "jsonl": str(path),
        "jsonl_sha256": digest,
    }


def _closure(names: list[str], defs: dict[str, TaskDefinition]) -> set[str]:
    """The named local tasks plus, recursively, the members of named groups."""
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out or name not in defs:
            continue
        out.add(name)
        todo.extend(defs[name].members)
    return out


def render_tasks(
    defs: dict[str, TaskDefinition], selected: list[str], data_paths: dict[str, Path], dest: Path
) -> Path:
    """Copy the selected task YAMLs into dest with placeholders replaced; return dest.

    qeval's own tasks go to ``dest/qeval``, a user's to ``dest/user``, beside every ``*.py``
    and every file a YAML includes, so ``lm_eval --include_path dest`` runs exactly the tasks
    this run ran. ``data_paths`` maps each dataset the selected tasks name to its JSONL.
    """
    wanted = _closure(selected, defs)
    roots = sorted({d.root for d in defs.values()}, key=lambda r: r != BUILTIN_TASKS_DIR)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for root in roots:
            sub = "qeval" if root == BUILTIN_TASKS_DIR else "user"
            root_defs, included = _scan_dir(root)
            # Leave out tasks not run, and qeval's own YAML for a task the user redefines
            # (lm-eval must see one definition per name).
            skipped = {
                d.path
                for d in root_defs.values()
                if d.name not in wanted or defs[d.name].root != root
            }
            files = [
                p
                for p in root.rglob("*")
                if p.is_file() and (p.suffix in (".yaml", ".py") or p.resolve() in included)
            ]
            for src in files:
                if "__pycache__" in src.parts or src.resolve() in skipped:
                    continue
                target = tmp / sub / src.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                if src.suffix == ".py":
                    shutil.copyfile(src, target)
                    continue
                text = _PLACEHOLDER_RE.sub(
                    lambda m: _data_path(m.group(1), data_paths), src.read_text(encoding="utf-8")
                )
                target.write_text(text, encoding="utf-8")
                if src.suffix == ".yaml":
                    _check_rendered(src, read_task_yaml(target))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _data_path(dataset: str, data_paths: dict[str, Path]) -> str:
    # A template no selected task includes may name data this run did not materialise.
    return str(data_paths.get(dataset, task_data_dir() / f"{dataset}-not-materialised.jsonl"))


def _check_rendered(src: Path, cfg: Any) -> None:
    def walk(value: Any) -> None:
        if isinstance(value, str) and DATA_PLACEHOLDER in value:
            raise TaskError(
                f"task file {src}: {value!r} still holds {DATA_PLACEHOLDER}. Write it as "
                f"{DATA_PLACEHOLDER}/<dataset>.jsonl with a dataset from {', '.join(eval_data.dataset_names())}."
            )
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(cfg)


# ----------------------------------------------------------------------------- atomic files


def _write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(
        path, (json.dumps(data, indent=2, default=_json_default) + "\n").encode("utf-8")
    )


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
    write_bytes_atomic(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


# ----------------------------------------------------------------------------- running


def _limits_by_task(
    limit: int | dict[str, int | None] | None, sel: _Selection
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


def _metric_results(raw: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's per-task results with ",none" stripped; "N/A" stderrs become None."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("alias", "name", "sample_len", "sample_count"):
            continue
        name = key.removesuffix(",none")
        if isinstance(value, str):
            value = None if value.strip().upper() == "N/A" else value
        out[name] = value
    return out


def _gold_index(task: Any, doc: dict[str, Any]) -> Any:
    """The correct choice's index, as lm-eval's ConfigurableTask.process_results finds it."""
    gold = task.doc_to_text(doc) if getattr(task, "multiple_input", 0) else task.doc_to_target(doc)
    if isinstance(gold, str):
        choices = task.doc_to_choice(doc)
        return choices.index(gold) if gold in choices else gold
    return gold


def _sample_rows(task: Any, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per document: target, prediction, per-sample metrics and log-likelihoods."""
    if not samples:
        return []
    first_filter = samples[0].get("filter", "none")
    wanted = "none" if any(s.get("filter") == "none" for s in samples) else first_filter
    output_type = task.get_config("output_type") if task is not None else None
    rows = []
    for s in sorted(
        (s for s in samples if s.get("filter", "none") == wanted), key=lambda s: s["doc_id"]
    ):
        row: dict[str, Any] = {"doc_id": int(s["doc_id"])}
        metrics = {m: s[m] for m in s.get("metrics", []) if m in s}
        resps = s.get("filtered_resps", [])
        if output_type == "multiple_choice":
            lls = [float(r[0]) for r in resps]
            row["target"] = _gold_index(task, s["doc"]) if task is not None else s.get("target")
            row["prediction"] = int(
                max(range(len(lls)), key=lambda i: (lls[i], -i))
            )  # np.argmax: first max
            row.update(
                {
                    m: int(v) if isinstance(v, float) and v in (0.0, 1.0) else v
                    for m, v in metrics.items()
                }
            )
            row["loglikelihoods"] = lls
        elif output_type == "loglikelihood":
            ll, is_greedy = resps[0]
            row["target"] = s.get("target")
            if "acc" in metrics:
                row["acc"] = int(metrics["acc"])
            row["loglikelihood"] = float(ll)
            row["is_greedy"] = bool(is_greedy)
        else:
            row["target"] = s.get("target")
            row["prediction"] = resps[0] if len(resps) == 1 else resps
            row.update(metrics)
        rows.append(row)
    return rows


def _task_provenance(
    task: Any, defs: dict[str, TaskDefinition], lm_name: str, prov_by_dataset: dict[str, Any]
) -> Any:
    if lm_name in defs and defs[lm_name].datasets:
        provs = {d: prov_by_dataset[d] for d in defs[lm_name].datasets}
        return next(iter(provs.values())) if len(provs) == 1 else provs
    cfg = task.config if task is not None else None
    return {
        "kind": "lm_eval",
        "dataset_path": getattr(cfg, "dataset_path", None),
        "dataset_name": getattr(cfg, "dataset_name", None),
        "dataset_kwargs": getattr(cfg, "dataset_kwargs", None),
    }


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
) -> dict:
    """Score a loaded model on tasks with lm-eval; write tasks.json and samples; return tasks.json's dict."""
    started = time.perf_counter()
    if isinstance(tasks, str) or not tasks:
        raise TaskError(f"tasks must be a non-empty list of task names, not {tasks!r}")
    out_dir = Path(out_dir)
    defs = discover_tasks(tasks_dir)
    sel = _resolve(list(tasks), defs)
    limits = _limits_by_task(limit, sel)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # Materialise only what the selected tasks read: with the Hub as source, others may be far.
    data_paths, prov_by_dataset = {}, {}
    needed = {ds for name in _closure(sel.local, defs) for ds in defs[name].datasets}
    for dataset in sorted(needed):
        data_paths[dataset], prov_by_dataset[dataset] = materialise_dataset(dataset, data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = render_tasks(defs, sel.local, data_paths, out_dir / RENDERED_DIR_NAME)

    # lm-eval's own index takes seconds to build: only when a name is not one of ours.
    with _quiet(show_progress):
        manager = TaskManager(include_path=str(rendered), include_defaults=bool(sel.external))
    unknown = [n for n in sel.external if n not in manager.all_tasks]
    if unknown:
        raise _unknown_task_error([sel.requested_by_lm_name[n] for n in unknown], defs)

    with _without_loaded_model_warnings():
        wrapped = HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length
        )
    evaluated: dict[str, Any] = {"results": {}, "n-samples": {}, "samples": {}}
    task_objects: dict[str, Any] = {}
    leaf_limit: dict[str, int | None] = {}
    for value in sorted(set(limits.values()), key=lambda v: (v is None, v or 0)):
        names = [n for n in limits if limits[n] == value]
        log.info("lm-eval: %s (limit %s)", ", ".join(names), value)
        with _quiet(show_progress):
            specs = []
            for name in names:
                loaded = _load_task(manager, name, external=name in sel.external, defs=defs)
                task_objects.update(loaded["tasks"])
                leaf_limit.update(dict.fromkeys(loaded["tasks"], value))
                groups = loaded.get("groups") or {}
                specs.extend([groups[name]] if name in groups else loaded["tasks"].values())
            result = lm_eval.simple_evaluate(
                model=wrapped,
                tasks=specs,
                task_manager=manager,
                limit=value,
                log_samples=True,
                **SEEDS,
            )
        for key in evaluated:
            evaluated[key].update(result.get(key) or {})

    # Report in the order asked, under the names asked (arc_easy, not qeval_arc_easy).
    order = {name: i for i, name in enumerate(sel.requested_by_lm_name)}
    for key in ("results", "n-samples"):
        evaluated[key] = dict(
            sorted(evaluated[key].items(), key=lambda kv: order.get(kv[0], len(order)))
        )
    report = {name: sel.requested_by_lm_name.get(name, name) for name in evaluated["results"]}
    samples_dir = out_dir / "samples"
    n_samples, sample_files = {}, {}
    for lm_name, samples in evaluated["samples"].items():
        rows = _sample_rows(task_objects.get(lm_name), samples)
        path = samples_dir / f"{report.get(lm_name, lm_name)}.jsonl"
        _write_jsonl_atomic(path, rows)
        sample_files[report.get(lm_name, lm_name)] = str(path.relative_to(out_dir))
    for lm_name, counts in evaluated["n-samples"].items():
        n_samples[report.get(lm_name, lm_name)] = int(
            counts.get("effective", counts.get("original", 0))
        )

    summary = {
        "results": {
            report[name]: _metric_results(raw) for name, raw in evaluated["results"].items()
        },
        "n_samples": n_samples,
        "limit": {
            report[name]: leaf_limit.get(name, limits.get(name)) for name in evaluated["results"]
        },
        "lm_eval_version": lm_eval.__version__,
        "tasks_dir": str(rendered),
        "lm_eval_tasks": {report[name]: name for name in evaluated["results"]},
        "provenance": {
            report.get(name, name): _task_provenance(task, defs, name, prov_by_dataset)
            for name, task in task_objects.items()
        },
        "samples": sample_files,
        "settings": {"batch_size": batch_size, "max_length": wrapped.max_length, "seeds": SEEDS},
        "duration_s": round(time.perf_counter() - started, 3),
    }
    _write_json_atomic(out_dir / "tasks.json", summary)
    return summary
