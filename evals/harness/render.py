"""Task data and rendering: materialise each dataset a task names, and write runnable YAMLs.

Rows come from a local data folder or the Hub (``evals.data.load_records``) into a
content-addressed JSONL in the cache; the selected YAMLs are copied into
``out_dir/task_defs`` with the placeholders replaced, so that the folder works as-is with
``lm_eval --include_path``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from evals import data as eval_data
from evals.harness.definitions import (
    BUILTIN_TASKS_DIR,
    DATA_PLACEHOLDER,
    PLACEHOLDER_RE,
    TaskDefinition,
    TaskError,
    read_task_yaml,
    scan_dir,
    task_closure,
)
from pipelines.recipes.embedded import cache_dir
from pipelines.rundir import atomic_directory, write_bytes_atomic


def task_data_dir() -> Path:
    """Where materialised task rows live (``$QEVAL_CACHE_DIR/task_data``, default ``.cache/``)."""
    return cache_dir() / "task_data"


def materialise_dataset(name: str, data_dir: Path | None) -> tuple[Path, dict[str, Any]]:
    """Write the rows of one dataset to a content-addressed JSONL; return its path and provenance."""
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


def render_tasks(
    defs: dict[str, TaskDefinition], selected: list[str], data_paths: dict[str, Path], dest: Path
) -> Path:
    """Copy the selected task YAMLs into dest with placeholders replaced; return dest.

    qeval's own tasks go to ``dest/qeval``, a user's to ``dest/user``, beside every ``*.py``
    and every file a YAML includes, so ``lm_eval --include_path dest`` runs exactly the tasks
    this run ran. ``data_paths`` maps each dataset the selected tasks name to its JSONL.
    """
    wanted = task_closure(selected, defs)
    roots = sorted({d.root for d in defs.values()}, key=lambda r: r != BUILTIN_TASKS_DIR)
    # Rendered into a staging folder that replaces dest whole: a killed run never leaves half a folder.
    with atomic_directory(dest) as tmp:
        for root in roots:
            sub = "qeval" if root == BUILTIN_TASKS_DIR else "user"
            root_defs, included = scan_dir(root)
            # Leave out tasks not run, and qeval's own YAML for a task the user redefines
            # (lm-eval must see one definition per name).
            skipped = {
                d.path
                for d in root_defs.values()
                if d.name not in wanted or defs[d.name].root != root
            }
            # The scan's own file list: qeval's earlier copies under a runs folder inside the
            # tasks folder are never copied again (they would nest deeper on every run).
            from evals.harness.definitions import task_files

            files = task_files(root, (".yaml", ".py")) + [p for p in included if p.is_file()
                                                          and p.suffix not in (".yaml", ".py")]
            for src in files:
                if "__pycache__" in src.parts or src.resolve() in skipped:
                    continue
                target = tmp / sub / src.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                if src.suffix == ".py":
                    shutil.copyfile(src, target)
                    continue
                text = PLACEHOLDER_RE.sub(
                    lambda m: _data_path(m.group(1), data_paths), src.read_text(encoding="utf-8")
                )
                target.write_text(text, encoding="utf-8")
                if src.suffix == ".yaml":
                    _check_rendered(src, read_task_yaml(target))
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
