"""Stage keys: each part that changes results changes exactly the keys of the stages it affects.

Most tests compute keys on a tiny Llama's planned run directory (no stage runs); the last one
runs the real stages and checks, from the manifests, which of them reran.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.stages import keys
from pipelines.stages.common import StageContext

SMOKE = {"perplexity": {"seq_len": 64, "max_windows": 1}, "tasks": {"limit": 4},
         "benchmark": {"batch_sizes": [1], "prompt_lens": [8], "gen_lens": [2], "iters": 1, "warmup": 0,
                       "min_time_s": 0}}
DATA_FILES = ("wikitext-2-raw/wiki.test.raw", "c4/c4_validation_2k.jsonl", "arc_easy/ARC-Easy-Test.hf.jsonl")
TASK_YAML = """task: my_arc
dataset_path: json
dataset_kwargs:
  data_files: {test: __QEVAL_TASK_DATA__/arc_easy.jsonl}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
metric_list:
  - metric: acc
"""


def copy_data(src: Path, dest: Path) -> Path:
    for rel in DATA_FILES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)
    return dest


@pytest.fixture
def env(tmp_path, monkeypatch, data_dir, tiny_llama_dir):
    """A runs root, a private copy of the data and a tasks folder with one user task."""
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(tmp_path / "runs"))
    data = copy_data(data_dir, tmp_path / "data")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "my_arc.yaml").write_text(TASK_YAML)
    return {"model": str(tiny_llama_dir), "data": data, "tasks": tasks, "tmp": tmp_path}


def keys_of(env, scheme: str = "baseline", *, overrides=None, data=None, tasks=None, threads=None) -> dict[str, str]:
    from pipelines.recipes import deep_merge

    opts = SweepOptions(model=env["model"], schemes=[scheme], suite="smoke", tasks=["arc_easy", "my_arc"],
                        tasks_dir=str(tasks or env["tasks"]), data_dir=str(data or env["data"]),
                        overrides=deep_merge(SMOKE, overrides or {}), quiet=True)
    p = plan(opts)
    write_plan(p, opts)
    ctx = StageContext.from_run_dir(p.model, scheme)
    return keys.stage_keys(ctx, threads)


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {stage for stage in before if before[stage] != after[stage]}


def test_moving_the_data_and_tasks_folders_changes_no_key(env):
    before = keys_of(env, "nf4")
    moved_data = env["tmp"] / "elsewhere" / "data"
    moved_data.parent.mkdir()
    env["data"].rename(moved_data)
    moved_tasks = env["tmp"] / "elsewhere" / "tasks"
    env["tasks"].rename(moved_tasks)
    assert keys_of(env, "nf4", data=moved_data, tasks=moved_tasks) == before


def test_data_content_reruns_what_read_it(env):
    base, nf4 = keys_of(env), keys_of(env, "nf4")
    with open(env["data"] / "wikitext-2-raw/wiki.test.raw", "a") as f:
        f.write("\n one more line \n")
    assert changed(base, keys_of(env)) == {"evaluate"}  # perplexity text: evaluate only
    base, nf4 = keys_of(env), keys_of(env, "nf4")
    with open(env["data"] / "c4/c4_validation_2k.jsonl", "a") as f:
        f.write(json.dumps({"text": "an extra calibration document"}) + "\n")
    # c4 is the calibration text: nf4's layer report reads it, the reference does not.
    assert changed(base, keys_of(env)) == set()
    assert changed(nf4, keys_of(env, "nf4")) == {"quantize", "evaluate", "benchmark", "serve"}


def test_a_task_yaml_change_reruns_evaluate_only(env):
    before = keys_of(env)
    (env["tasks"] / "my_arc.yaml").write_text(TASK_YAML.replace("Answer:", "A:"))
    assert changed(before, keys_of(env)) == {"evaluate"}
    # A YAML of a task that is not run changes nothing.
    before = keys_of(env)
    (env["tasks"] / "unused.yaml").write_text(TASK_YAML.replace("my_arc", "unused_task"))
    assert changed(before, keys_of(env)) == set()


@pytest.mark.parametrize("overrides,expected", [
    ({"benchmark": {"iters": 2}}, {"benchmark"}),
    ({"perplexity": {"max_windows": 2}}, {"evaluate"}),
    ({"tasks": {"limit": 5}}, {"evaluate"}),
    ({"calibration": {"n_samples": 3}}, set()),  # the reference reads no calibration text
])
def test_recipe_settings_rerun_their_stage(env, overrides, expected):
    assert changed(keys_of(env), keys_of(env, overrides=overrides)) == expected


def test_calibration_settings_rerun_a_scheme_that_reads_them(env):
    assert changed(keys_of(env, "nf4"), keys_of(env, "nf4", overrides={"calibration": {"n_samples": 3}})) == {
        "quantize", "evaluate", "benchmark", "serve"}


def test_threads_device_max_context_and_gpus(env, recipes, monkeypatch):
    import yaml

    from pipelines.quantizers import loading

    before = keys_of(env)
    assert changed(before, keys_of(env, threads=keys.torch_threads() + 1)) == {"quantize", "evaluate", "benchmark", "serve"}
    # A local model's recipe is derived from its path; a model recipe file sets the other fields.
    model_file = recipes / "models" / "tiny.yaml"
    model_file.write_text(yaml.safe_dump({"name": "tiny", "source": env["model"], "dtype": "float32",
                                          "default_suite": "smoke"}))
    env = {**env, "model": "tiny"}
    before = keys_of(env)
    model_file.write_text(yaml.safe_dump({**yaml.safe_load(model_file.read_text()), "max_context": 256}))
    assert changed(before, keys_of(env)) == {"evaluate"}
    before = keys_of(env)
    model_file.write_text(yaml.safe_dump({**yaml.safe_load(model_file.read_text()), "n_gpus": 2}))
    assert changed(before, keys_of(env)) == {"quantize", "evaluate", "benchmark", "serve"}
    # The device: what the stage would run on (faked here: this machine has one kind).
    before = keys_of(env)
    monkeypatch.setattr(loading, "resolve_device", lambda device: "cuda")
    assert changed(before, keys_of(env)) == {"quantize", "evaluate", "benchmark", "serve"}


def copy_code(tmp: Path) -> Path:
    root = tmp / "code"
    for top in ("pipelines", "evals"):
        shutil.copytree(keys.PROJECT_ROOT / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize("edited,affected", [
    ("evals/speed.py", {"benchmark"}),
    ("evals/perplexity.py", {"evaluate"}),
    ("evals/stats.py", set()),
    ("evals/data.py", {"quantize", "evaluate", "benchmark", "serve"}),
    ("pipelines/stages/evaluate.py", {"evaluate"}),
    ("pipelines/quantizers/base.py", {"quantize"}),
])
def test_code_digest_follows_the_code_a_stage_runs(tmp_path, edited, affected):
    root = copy_code(tmp_path)
    before = {stage: keys.code_digest(stage, "nf4", root) for stage in keys.STAGES}
    with open(root / edited, "a") as f:
        f.write("\n# a fix to a metric\n")
    after = {stage: keys.code_digest(stage, "nf4", root) for stage in keys.STAGES}
    assert changed(before, after) == affected


def test_a_quantizer_module_changes_only_its_own_scheme(tmp_path):
    root = copy_code(tmp_path)
    before = {q: keys.code_digest("quantize", q, root) for q in ("nf4", "baseline")}
    with open(root / "pipelines/quantizers/nf4.py", "a") as f:
        f.write("\n# changed\n")
    assert keys.code_digest("quantize", "nf4", root) != before["nf4"]
    assert keys.code_digest("quantize", "baseline", root) == before["baseline"]


def stage_runs(runs: Path, model: str, scheme: str) -> dict[str, float]:
    manifest = json.loads((runs / model / scheme / "manifest.json").read_text())
    return {stage: entry["started_at"] for stage, entry in manifest["stages"].items()}


@pytest.mark.slow  # real worker processes
def test_real_reruns_follow_the_keys(env, capsys):
    """Run the baseline for real; then only what a change affects reruns."""
    from pipelines import cli

    runs, model = env["tmp"] / "runs", Path(env["model"]).name

    def sweep(data: Path, *extra: str) -> None:
        code = cli.main(["run", "--quiet", "--no-track", "--model", env["model"], "--suite", "smoke",
                         "--schemes", "baseline", "--tasks", "my_arc", "--tasks-dir", str(env["tasks"]),
                         "--data-dir", str(data), "--set", "perplexity={seq_len: 64, max_windows: 1}",
                         "--set", "tasks.limit=4", "--set",
                         "benchmark={batch_sizes: [1], prompt_lens: [8], gen_lens: [2], iters: 1, warmup: 0, "
                         "min_time_s: 0}", *extra])
        out = capsys.readouterr()
        # A baseline alone has nothing to sign off; what counts here is that every stage finished.
        statuses = {s: e["status"] for s, e in json.loads(
            (runs / model / "baseline" / "manifest.json").read_text())["stages"].items()}
        assert statuses == dict.fromkeys(("quantize", "evaluate", "benchmark", "serve"), "done"), (code, out.out + out.err)

    sweep(env["data"])
    first = stage_runs(runs, model, "baseline")
    assert set(first) == {"quantize", "evaluate", "benchmark", "serve"}

    moved = env["tmp"] / "moved-data"
    env["data"].rename(moved)
    sweep(moved)
    assert stage_runs(runs, model, "baseline") == first  # same content elsewhere: nothing reran

    sweep(moved, "--set", "benchmark.iters=2")
    second = stage_runs(runs, model, "baseline")
    assert [s for s in first if first[s] != second[s]] == ["benchmark"]

    (env["tasks"] / "my_arc.yaml").write_text(TASK_YAML.replace("Answer:", "A:"))
    sweep(moved, "--set", "benchmark.iters=2")
    third = stage_runs(runs, model, "baseline")
    assert [s for s in second if second[s] != third[s]] == ["evaluate"]
