"""Task definitions: reading qeval's and a user's task YAMLs, and resolving requested names.

qeval's YAMLs name their data by a placeholder, ``__QEVAL_TASK_DATA__/<dataset>.jsonl``,
where ``<dataset>`` is a name known to :mod:`evals.data`; :mod:`evals.harness.render`
replaces it for a run.

A user's task folder is scanned for ``*.yaml`` as lm-eval's index does, except qeval's own
outputs and tool folders: the runs root (``QEVAL_RUNS_DIR``) and any run
tree in the folder (a folder with ``sweep.json``, or ``manifest.json`` beside ``recipe.yaml``,
whose ``eval/task_defs/`` holds copies of the tasks it ran), hidden folders (``.git``,
``.cache``, ``.venv``) and ``__pycache__``/``node_modules``. A name defined twice in what remains
is a true duplicate, refused at planning (``qeval plan`` and ``qeval run`` read every task).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evals import data as eval_data

log = logging.getLogger(__name__)

TASK_PREFIX = "qeval_"
DATA_PLACEHOLDER = "__QEVAL_TASK_DATA__"
PLACEHOLDER_RE = re.compile(re.escape(DATA_PLACEHOLDER) + r"/([A-Za-z0-9_.-]+?)\.jsonl")
BUILTIN_TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"


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
class Selection:
    """Requested names resolved to lm-eval names; which ones are qeval's."""

    local: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    requested_by_lm_name: dict[str, str] = field(default_factory=dict)



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
    names = set(PLACEHOLDER_RE.findall(path.read_text(encoding="utf-8")))
    unknown = names - set(eval_data.DATASETS)
    if unknown:
        raise TaskError(
            f"task file {path} names unknown dataset(s) {sorted(unknown)} in {DATA_PLACEHOLDER}/<dataset>.jsonl. "
            f"Known datasets: {', '.join(eval_data.dataset_names())}."
        )
    return names


SKIPPED_DIR_NAMES = {"__pycache__", "node_modules"}


def _runs_root() -> Path:
    from pipelines.rundir.paths import runs_root

    return runs_root()


def is_qeval_output(folder: Path) -> bool:
    """A folder qeval wrote: a model's run folder (sweep.json) or a scheme's (manifest.json + recipe.yaml)."""
    return (folder / "sweep.json").is_file() or (
        (folder / "manifest.json").is_file() and (folder / "recipe.yaml").is_file()
    )


def task_files(root: Path, suffixes: tuple[str, ...] = (".yaml",)) -> list[Path]:
    """The files under ``root`` a task scan reads, sorted: every file with one of ``suffixes``, except
    under hidden folders, ``__pycache__``/``node_modules``, the runs root and qeval's run trees."""
    root = Path(root)
    runs = _runs_root()
    out: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        kept = []
        for name in sorted(dirs):
            sub = here / name
            if name.startswith(".") or name in SKIPPED_DIR_NAMES:
                continue
            if sub.resolve() == runs or is_qeval_output(sub):
                log.debug("task scan of %s: skipping %s (qeval's own output)", root, sub)
                continue
            kept.append(name)
        dirs[:] = kept
        out += [here / f for f in files if f.endswith(suffixes)]
    return sorted(out, key=lambda p: p.as_posix())


def scan_dir(root: Path) -> tuple[dict[str, TaskDefinition], set[Path]]:
    """Read every ``*.yaml`` under root (as lm-eval's index does, less qeval's own outputs: ``task_files``);
    return tasks and included files."""
    defs: dict[str, TaskDefinition] = {}
    included: set[Path] = set()
    for path in task_files(root):
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
                f"task {name!r} is defined twice: in {defs[name].path} and in {path}. Rename one, "
                "or move the copy out of the tasks folder."
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
    defs, _ = scan_dir(BUILTIN_TASKS_DIR)
    if tasks_dir is not None:
        tasks_dir = Path(tasks_dir)
        if not tasks_dir.is_dir():
            raise TaskError(
                f"tasks_dir {tasks_dir} is not a folder. Point it at a folder of lm-eval task YAMLs."
            )
        user_defs, _ = scan_dir(tasks_dir)
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


def resolve_names(tasks: list[str], defs: dict[str, TaskDefinition]) -> Selection:
    sel = Selection()
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


def unknown_task_error(names: list[str], defs: dict[str, TaskDefinition]) -> TaskError:
    local = ", ".join(sorted(d.short_name for d in defs.values()))
    return TaskError(
        f"unknown task(s) {', '.join(repr(n) for n in names)}. Local tasks: {local} "
        f"(also accepted with the {TASK_PREFIX!r} prefix). Other names must be lm-eval task names "
        "(`lm_eval ls tasks`), or tasks defined in a tasks_dir."
    )


def task_closure(names: list[str], defs: dict[str, TaskDefinition]) -> set[str]:
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
