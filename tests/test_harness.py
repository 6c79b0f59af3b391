"""Task accuracy through lm-eval on qeval's local task definitions (tiny Llama, real data)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evals import data as eval_data
from evals.harness import (
    BUILTIN_TASKS_DIR,
    DATA_PLACEHOLDER,
    TaskError,
    discover_tasks,
    local_task_names,
    materialise_dataset,
    run_tasks,
)

LOCAL_TASKS = ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai"]
# Two distinct limits, so the run needs two lm-eval calls on the one loaded model.
LIMITS = {
    "hellaswag": 5,
    "lambada_openai": 5,
    "arc_easy": 8,
    "arc_challenge": 8,
    "piqa": 8,
    "winogrande": 8,
}
MULTIPLE_CHOICE_WITH_NORM = {"hellaswag", "arc_easy", "arc_challenge", "piqa"}
LM_EVAL_TASKS = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"  # its own YAMLs


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def local_run(tiny_model, data_dir, tmp_path_factory):
    model, tok = tiny_model
    out = tmp_path_factory.mktemp("tasks_run")
    summary = run_tasks(
        model, tok, LOCAL_TASKS, out_dir=out, data_dir=data_dir, limit=LIMITS, show_progress=False
    )
    return out, summary


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("task", LOCAL_TASKS)
def test_local_task_reports_lm_eval_metrics(local_run, task):
    _, summary = local_run
    metrics = summary["results"][task]
    assert 0.0 <= metrics["acc"] <= 1.0
    assert metrics["acc_stderr"] is not None and metrics["acc_stderr"] >= 0.0
    if task in MULTIPLE_CHOICE_WITH_NORM:
        assert 0.0 <= metrics["acc_norm"] <= 1.0 and metrics["acc_norm_stderr"] >= 0.0
    else:
        assert "acc_norm" not in metrics  # lm-eval's winogrande and lambada_openai have none
    if task == "lambada_openai":
        assert metrics["perplexity"] > 1.0 and metrics["perplexity_stderr"] > 0.0
    assert not any("," in name for name in metrics)
    assert summary["n_samples"][task] == LIMITS[task]
    assert summary["limit"][task] == LIMITS[task]
    assert summary["lm_eval_tasks"][task] == f"qeval_{task}"


@pytest.mark.parametrize("task", LOCAL_TASKS)
def test_samples_file_agrees_with_reported_metrics(local_run, task):
    out, summary = local_run
    rows = _read_jsonl(out / "samples" / f"{task}.jsonl")
    assert [r["doc_id"] for r in rows] == list(range(LIMITS[task]))
    metrics = summary["results"][task]
    assert sum(r["acc"] for r in rows) / len(rows) == pytest.approx(metrics["acc"], abs=1e-12)
    if task == "lambada_openai":
        mean_ll = sum(r["loglikelihood"] for r in rows) / len(rows)
        assert math.exp(-mean_ll) == pytest.approx(metrics["perplexity"], rel=1e-9)
        assert all(r["target"].startswith(" ") and r["acc"] == int(r["is_greedy"]) for r in rows)
        return
    for r in rows:
        lls = r["loglikelihoods"]
        assert r["prediction"] == lls.index(max(lls))
        assert r["acc"] == int(r["prediction"] == r["target"])
    if task in MULTIPLE_CHOICE_WITH_NORM:
        assert sum(r["acc_norm"] for r in rows) / len(rows) == pytest.approx(
            metrics["acc_norm"], abs=1e-12
        )


def test_tasks_json_records_rendered_definitions_and_provenance(local_run, data_dir):
    out, summary = local_run
    assert json.loads((out / "tasks.json").read_text()) == json.loads(json.dumps(summary))
    rendered = Path(summary["tasks_dir"])
    assert rendered.is_dir() and rendered.is_relative_to(out)
    arc = (rendered / "qeval" / "qeval_arc_easy.yaml").read_text()
    assert DATA_PLACEHOLDER + "/" not in arc
    prov = summary["provenance"]["winogrande"]
    assert prov["kind"] == "local" and prov["path"] == str(data_dir / "winogrande" / "dev.jsonl")
    assert prov["sha256"] == eval_data.sha256_file(data_dir / "winogrande" / "dev.jsonl")
    assert "labels_sha256" in prov and Path(prov["jsonl"]).is_file()
    assert prov["jsonl"] in (rendered / "qeval" / "qeval_winogrande.yaml").read_text()
    assert summary["lm_eval_version"] == "0.4.13"


def test_tasks_json_records_dtype_and_the_lm_eval_commands_that_reproduce_it(local_run, tiny_llama_dir):
    import shlex

    from evals.results import TasksResult

    out, _ = local_run
    result = TasksResult.read(out / "tasks.json")  # strict: the fields the real run wrote
    assert result.dtype == "float32"
    # One command per distinct limit (lm_eval's --limit is global to a call).
    assert len(result.lm_eval_commands) == len(set(LIMITS.values()))
    by_limit = {}
    for command in result.lm_eval_commands:
        argv = shlex.split(command)
        assert argv[0] == "lm_eval"
        args = dict(zip(argv[1::2], argv[2::2], strict=True))
        model_args = dict(kv.split("=", 1) for kv in args["--model_args"].split(","))
        assert model_args["pretrained"] == str(tiny_llama_dir) and model_args["dtype"] == "float32"
        assert model_args["max_length"] == str(result.settings["max_length"])
        assert args["--include_path"] == result.tasks_dir and args["--batch_size"] == "8"
        assert args["--device"] == "cpu" and args["--seed"] == "0,1234,1234,1234"
        by_limit[int(args["--limit"])] = sorted(args["--tasks"].split(","))
    expected = {}
    for task, n in LIMITS.items():
        expected.setdefault(n, []).append(result.lm_eval_tasks[task])
    assert by_limit == {n: sorted(names) for n, names in expected.items()}


def _build_task(cfg: dict):
    from lm_eval.tasks import TaskManager

    (task,) = TaskManager(include_defaults=False).load([cfg])["tasks"].values()
    return task


@pytest.mark.parametrize(
    ("task", "builtin", "dataset"),
    [
        ("arc_easy", "arc/arc_easy.yaml", "arc_easy"),
        ("arc_challenge", "arc/arc_challenge.yaml", "arc_challenge"),
        ("piqa", "piqa/piqa.yaml", "piqa"),
        ("winogrande", "winogrande/default.yaml", "winogrande"),
        ("lambada_openai", "lambada/lambada_openai.yaml", "lambada"),
    ],
)
def test_definition_builds_the_requests_lm_eval_builds(task, builtin, dataset, data_dir):
    """qeval's YAML and lm-eval's own, pointed at the same rows, give identical requests and metrics."""
    from lm_eval.tasks._yaml_loader import load_yaml

    jsonl, _ = materialise_dataset(dataset, data_dir)
    data = {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(jsonl)}},
    }
    reference_cfg = load_yaml(LM_EVAL_TASKS / builtin)
    reference_cfg.pop("tag", None)
    reference_cfg.update(
        data,
        task=f"reference_{task}",
        training_split=None,
        validation_split=None,
        test_split="test",
    )
    ours_cfg = load_yaml(BUILTIN_TASKS_DIR / f"qeval_{task}.yaml")
    ours_cfg.update(data)
    reference, ours = _build_task(reference_cfg), _build_task(ours_cfg)
    for t in (reference, ours):
        t.set_config(key="num_fewshot", value=0)
        t.build_all_requests(limit=40)
    assert [i.args for i in ours.instances] == [i.args for i in reference.instances]
    assert [i.request_type for i in ours.instances] == [i.request_type for i in reference.instances]
    docs = list(reference.eval_docs)[:40]
    assert [ours.doc_to_target(d) for d in docs] == [reference.doc_to_target(d) for d in docs]
    assert list(ours._metric_fn_list) == list(reference._metric_fn_list)
    assert ours._aggregation_list == reference._aggregation_list
    assert ours._higher_is_better == reference._higher_is_better


def _module_from(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hellaswag_hub_rows_are_processed_like_lm_eval():
    import datasets

    reference = _module_from(LM_EVAL_TASKS / "hellaswag" / "utils.py", "reference_hellaswag_utils")
    ours = _module_from(BUILTIN_TASKS_DIR / "utils.py", "qeval_task_utils")
    rows = datasets.Dataset.from_list(
        [
            {
                "activity_label": "Roof shingle removal",
                "ctx_a": "A man is sitting on a roof.",
                "ctx_b": "he",
                "endings": [
                    "is using wrap to wrap a pair of skis.",
                    " starts pulling up [title] roofing.",
                ],
                "label": "1",
            },
            {
                "activity_label": "Home and Garden",
                "ctx_a": "How to  paint [header] a fence.",
                "ctx_b": "",
                "endings": ["Buy [step] paint.", "Sand it."],
                "label": "0",
            },
        ]
    )
    assert ours.hellaswag_process_docs(rows).to_list() == reference.process_docs(rows).to_list()


def test_local_task_names_are_the_short_names():
    assert local_task_names() == sorted([*LOCAL_TASKS, "gsm8k"])  # gsm8k: generative, tests/test_gsm8k.py
    assert all(name.startswith("qeval_") for name in discover_tasks())


def test_unknown_task_raises_listing_local_tasks(tiny_model, data_dir, tmp_path):
    model, tok = tiny_model
    with pytest.raises(TaskError) as err:
        run_tasks(
            model,
            tok,
            ["no_such_task_xyz"],
            out_dir=tmp_path,
            data_dir=data_dir,
            show_progress=False,
        )
    message = str(err.value)
    assert "no_such_task_xyz" in message
    assert all(name in message for name in LOCAL_TASKS)


def test_broken_yaml_in_tasks_dir_raises_naming_the_file(tiny_model, data_dir, tmp_path):
    model, tok = tiny_model
    tasks_dir = tmp_path / "my_tasks"
    tasks_dir.mkdir()
    (tasks_dir / "fine.yaml").write_text("task: fine\ndoc_to_text: !function helpers.text\n")
    (tasks_dir / "broken.yaml").write_text("task: broken\ndoc_to_text: [unclosed\n")
    with pytest.raises(TaskError, match=r"broken\.yaml.*not valid YAML"):
        run_tasks(
            model,
            tok,
            ["arc_easy"],
            out_dir=tmp_path / "out",
            data_dir=data_dir,
            tasks_dir=tasks_dir,
        )


def test_bad_limits_raise(tiny_model, data_dir, tmp_path):
    model, tok = tiny_model
    with pytest.raises(TaskError, match="positive integer"):
        run_tasks(model, tok, ["arc_easy"], out_dir=tmp_path, data_dir=data_dir, limit=0)
    with pytest.raises(TaskError, match="not being run"):
        run_tasks(model, tok, ["arc_easy"], out_dir=tmp_path, data_dir=data_dir, limit={"piqa": 3})


USER_TASK_ON_QEVAL_DATA = """\
task: arc_easy_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: __QEVAL_TASK_DATA__/arc_easy.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
metric_list:
  - metric: acc
"""

USER_TASK_ON_OWN_DATA = """\
task: yes_or_no
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: !function helpers.prompt
doc_to_target: answer
doc_to_choice: ["no", "yes"]
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_user_tasks_dir_adds_custom_tasks(tiny_model, data_dir, tmp_path):
    model, tok = tiny_model
    tasks_dir = tmp_path / "my_tasks"
    tasks_dir.mkdir()
    rows = tmp_path / "yes_no.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"q": f"Is {n} even?", "answer": int(n % 2 == 0)}) + "\n" for n in range(6)
        )
    )
    (tasks_dir / "arc_easy_qa.yaml").write_text(USER_TASK_ON_QEVAL_DATA)
    (tasks_dir / "yes_or_no.yaml").write_text(USER_TASK_ON_OWN_DATA.format(data=rows))
    (tasks_dir / "helpers.py").write_text(
        "def prompt(doc):\n    return 'Question: ' + doc['q'] + '\\nAnswer:'\n"
    )
    out = tmp_path / "out"
    summary = run_tasks(
        model,
        tok,
        ["arc_easy_qa", "yes_or_no", "piqa"],
        out_dir=out,
        data_dir=data_dir,
        tasks_dir=tasks_dir,
        limit={"arc_easy_qa": 4, "piqa": 3},
        show_progress=False,
    )
    assert list(summary["results"]) == ["arc_easy_qa", "yes_or_no", "piqa"]
    assert summary["n_samples"] == {"arc_easy_qa": 4, "yes_or_no": 6, "piqa": 3}
    assert summary["limit"]["yes_or_no"] is None
    assert set(summary["results"]["yes_or_no"]) >= {"acc", "acc_norm", "acc_stderr"}
    assert summary["provenance"]["arc_easy_qa"]["dataset"] == "arc_easy"
    assert summary["provenance"]["yes_or_no"]["kind"] == "lm_eval"
    yes_no = _read_jsonl(out / "samples" / "yes_or_no.jsonl")
    assert [r["target"] for r in yes_no] == [1, 0, 1, 0, 1, 0]
    rendered = Path(summary["tasks_dir"])
    assert (rendered / "user" / "helpers.py").is_file()
    # Only what ran is rendered, so `lm_eval --include_path` on it sees these tasks alone.
    assert sorted(p.name for p in (rendered / "qeval").glob("*.yaml")) == ["qeval_piqa.yaml"]
    assert DATA_PLACEHOLDER not in (rendered / "user" / "arc_easy_qa.yaml").read_text()


@pytest.mark.slow
def test_recorded_lm_eval_command_reproduces_the_accuracy(tiny_llama_dir, data_dir, tmp_path):
    """Run the `lm_eval` command tasks.json records, as a user would; it gives the same numbers."""
    import shlex

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ours = run_tasks(
        model,
        tok,
        ["arc_easy"],
        out_dir=tmp_path / "ours",
        data_dir=data_dir,
        limit=20,
        show_progress=False,
    )
    (command,) = ours["lm_eval_commands"]
    argv = shlex.split(command)
    argv[0] = str(Path(sys.executable).parent / "lm_eval")
    out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([*argv, "--output_path", str(out)], check=True, env=env, capture_output=True, text=True)
    (results_file,) = out.rglob("results_*.json")
    cli = json.loads(results_file.read_text())["results"]["qeval_arc_easy"]
    for metric in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
        assert ours["results"]["arc_easy"][metric] == cli[f"{metric},none"], metric


def test_other_names_go_to_lm_eval_registry(tiny_model, data_dir, tmp_path):
    """A name that is not local reaches lm-eval's own tasks: offline it fails naming the Hub."""
    model, tok = tiny_model
    try:
        summary = run_tasks(
            model,
            tok,
            ["lambada_standard"],
            out_dir=tmp_path,
            data_dir=data_dir,
            limit=2,
            show_progress=False,
        )
    except TaskError as err:
        assert os.environ.get("HF_HUB_OFFLINE") == "1"
        assert "lambada_standard" in str(err) and "Hub" in str(err)
    else:  # a machine with Hub access runs lm-eval's own task
        assert summary["n_samples"] == {"lambada_standard": 2}
        assert summary["provenance"]["lambada_standard"]["kind"] == "lm_eval"
