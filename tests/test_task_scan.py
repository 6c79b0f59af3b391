"""A user task folder that holds the runs folder too.

The evaluate stage copies each user task YAML into ``runs/<model>/<scheme>/eval/task_defs/user/``
(``evals.harness.render.render_tasks``, the code the stage runs). The next scan of the task
folder must not count that copy (nor hidden or cache folders) as a second definition; a real
duplicate in the user's own files is refused at planning, exit 2, with the message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.harness import TaskError, discover_tasks
from evals.harness.definitions import task_files
from evals.harness.render import render_tasks
from pipelines import cli
from pipelines.errors import EXIT_BAD_INPUT
from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.rundir import scheme_dir

TASK = """\
task: yes_or_no
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{q}}}}\\nAnswer:"
doc_to_target: answer
doc_to_choice: ["no", "yes"]
metric_list:
  - metric: acc
"""


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    """$d with the user's task (and its data) and QEVAL_RUNS_DIR=$d/runs: the layout of the report."""
    d = tmp_path / "d"
    d.mkdir()
    rows = d / "yes_no.jsonl"
    rows.write_text("".join(json.dumps({"q": f"Is {n} even?", "answer": int(n % 2 == 0)}) + "\n" for n in range(6)))
    (d / "yes_or_no.yaml").write_text(TASK.format(data=rows))
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(d / "runs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return d


def options(model: Path, tasks_dir: Path) -> SweepOptions:
    return SweepOptions(model=str(model), schemes=["baseline"], suite="smoke", tasks=["yes_or_no"], limit=4,
                        tasks_dir=str(tasks_dir), quiet=True, track=False)


def copy_as_the_evaluate_stage_does(model: str, scheme: str, tasks_dir: Path) -> Path:
    """What evaluate leaves in the run directory: the rendered task_defs with the user's copy."""
    defs = discover_tasks(tasks_dir)
    dest = render_tasks(defs, ["yes_or_no"], {}, scheme_dir(model, scheme).eval_dir / "task_defs")
    copy = dest / "user" / "yes_or_no.yaml"
    assert copy.is_file()
    return copy


def test_the_copy_in_the_runs_folder_is_not_a_second_definition(folder, tiny_llama_dir):
    opts = options(tiny_llama_dir, folder)
    p = plan(opts)
    write_plan(p, opts)  # runs/<model>/baseline/{recipe.yaml,manifest.json}, as a sweep writes them
    copy = copy_as_the_evaluate_stage_does(p.model, "baseline", folder)
    assert folder / "runs" in copy.parents
    defs = discover_tasks(folder)  # the evaluate stage's next scan
    assert defs["yes_or_no"].path == (folder / "yes_or_no.yaml").resolve()
    plan(opts)  # and the next sweep's planning
    assert copy not in task_files(folder)


def test_a_run_tree_outside_the_current_runs_root_is_skipped_too(folder, tiny_llama_dir, monkeypatch):
    opts = options(tiny_llama_dir, folder)
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(folder / "old-runs"))
    p = plan(opts)
    write_plan(p, opts)
    copy_as_the_evaluate_stage_does(p.model, "baseline", folder)
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(folder.parent / "elsewhere"))  # a later sweep writes elsewhere
    assert discover_tasks(folder)["yes_or_no"].path == (folder / "yes_or_no.yaml").resolve()


def test_hidden_and_cache_folders_are_not_scanned(folder):
    for hidden in (".git", ".cache/x", ".ipynb_checkpoints", "__pycache__", "node_modules/pkg"):
        (folder / hidden).mkdir(parents=True)
        (folder / hidden / "yes_or_no.yaml").write_text((folder / "yes_or_no.yaml").read_text())
    assert [p.name for p in task_files(folder)] == ["yes_or_no.yaml"]
    assert "yes_or_no" in discover_tasks(folder)


def test_a_true_duplicate_is_refused_at_plan_time(folder, tiny_llama_dir, capsys):
    (folder / "more").mkdir()
    (folder / "more" / "again.yaml").write_text((folder / "yes_or_no.yaml").read_text())
    with pytest.raises(TaskError, match=r"task 'yes_or_no' is defined twice: in .*more/again\.yaml and in "
                                        r".*d/yes_or_no\.yaml\. Rename one"):
        plan(options(tiny_llama_dir, folder))
    code = cli.main(["plan", "--model", str(tiny_llama_dir), "--schemes", "baseline", "--suite", "smoke",
                     "--tasks", "yes_or_no", "--limit", "4", "--tasks-dir", str(folder)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "defined twice" in err, err
    assert not (folder / "runs").exists()
