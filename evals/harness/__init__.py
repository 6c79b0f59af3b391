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
5. writes ``tasks.json`` (through ``evals.results.TasksResult``, with the model's dtype and
   the `lm_eval` command lines that reproduce it) and ``samples/<task>.jsonl`` atomically.

Short names (``arc_easy``) map to qeval's tasks (``qeval_arc_easy``); any other name is passed
to lm-eval's own task registry (which needs the Hub for its data).
"""

from __future__ import annotations

from evals.harness.definitions import (  # noqa: F401
    BUILTIN_TASKS_DIR,
    DATA_PLACEHOLDER,
    TASK_PREFIX,
    TaskDefinition,
    TaskError,
    discover_tasks,
    local_task_names,
    read_task_yaml,
    resolve_names,  # noqa: F401
)
from evals.harness.render import materialise_dataset, render_tasks, task_data_dir  # noqa: F401
from evals.harness.run import (  # noqa: F401
    RENDERED_DIR_NAME,
    SEEDS,
    limits_by_task,
    lm_eval_command,
    run_tasks,
)

