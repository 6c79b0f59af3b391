"""The interface a practitioner expects: `qeval list`, `qeval plan`, your own recipe files,
make variables, a clear error for a model that cannot be fetched, a log for people, the first and
last lines of a sweep. The sweep here is real: a user's suite file in a temporary folder, the tiny
Llama, baseline + FP8 (torchao), smoke-sized settings, no tracking.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT, run_qeval

from pipelines import cli

TINY_SETTINGS = {
    "calibration": {"n_samples": 2, "seq_len": 64},
    "perplexity": {"datasets": ["wikitext2"], "seq_len": 64, "max_windows": 1, "batch_size": 1},
    "tasks": {"names": []},
    "benchmark": {"batch_sizes": [1], "prompt_lens": [16], "gen_lens": [4], "warmup": 0, "iters": 1,
                  "min_time_s": 0},
}


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with the sha256 of its bytes: 'unchanged byte for byte'."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def write_user_recipes(folder: Path) -> Path:
    """A suite file that names a scheme file beside it, by a relative path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my-fp8.yaml").write_text(yaml.safe_dump({"quantizer": "fp8", "description": "my FP8 variant"}))
    suite = {"description": "a user's own suite", "schemes": ["baseline", "./my-fp8.yaml"], **TINY_SETTINGS,
             "gates": {"ppl_max_rel_increase": 0.5}}
    path = folder / "my_suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


# The tests that read this sweep are marked slow: it runs real workers (about a minute on 2 idle cores).
@pytest.fixture(scope="module")
def user_sweep(tmp_path_factory, tiny_llama_dir):
    """One real two-scheme sweep from a user's suite file; later tests read (never write) its runs."""
    root = tmp_path_factory.mktemp("interface")
    suite = write_user_recipes(root / "elsewhere")
    runs = root / "runs"
    proc = run_qeval("run", "--no-track", "--model", str(tiny_llama_dir), "--suite", str(suite),
                     env={"QEVAL_RUNS_DIR": str(runs)}, timeout=900)
    return {"runs": runs, "suite": suite, "model_dir": tiny_llama_dir, "proc": proc, "model": tiny_llama_dir.name}


# ----------------------------------------------------------------------------- bring your own recipes


@pytest.mark.slow
def test_a_user_suite_file_runs_a_two_scheme_sweep(user_sweep):
    proc, runs, model = user_sweep["proc"], user_sweep["runs"], user_sweep["model"]
    assert proc.returncode in (0, 1, 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    for scheme in ("baseline", "my-fp8"):
        manifest = json.loads((runs / model / scheme / "manifest.json").read_text())
        assert all(manifest["stages"][s]["status"] == "done" for s in ("quantize", "evaluate", "benchmark"))
        assert manifest["stages"]["quantize"]["versions"]["torch"]  # recorded for "library upgraded"
        recipe = yaml.safe_load((runs / model / scheme / "recipe.yaml").read_text())
        assert recipe["suite"] == "my_suite" and recipe["perplexity"]["max_windows"] == 1
    assert json.loads((runs / model / "sweep.json").read_text())["schemes"] == ["baseline", "my-fp8"]


@pytest.mark.slow
def test_first_lines_say_what_the_sweep_will_do_and_last_lines_what_it_means(user_sweep):
    out = user_sweep["proc"].stdout
    head = out[: out.index("estimated:")]
    for part in (f"model {user_sweep['model']}", "suite my_suite", "baseline, my-fp8", "data:", "runs:",
                 str(user_sweep["runs"] / user_sweep["model"]), "tracking:  off (--no-track)"):
        assert part in head, out[:2000]
    # Nothing ran before on this runs root, so every stage is estimated from the compute probe.
    estimated = out[len(head):].split("\n")[0]
    assert re.fullmatch(r"estimated: about \d+ (s|min) \(8 stages to run\)", estimated), estimated
    tail = out.strip().splitlines()[-3:]
    assert any(line.startswith(f"exit code {user_sweep['proc'].returncode}: ") for line in tail), tail
    assert any("signoff.html" in line for line in tail), tail


def test_a_user_suite_validates_with_the_same_errors(tmp_path, capsys, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(tmp_path / "runs"))
    suite = write_user_recipes(tmp_path / "mine")
    data = yaml.safe_load(suite.read_text())
    data["perplexty"] = data.pop("perplexity")
    suite.write_text(yaml.safe_dump(data))
    assert cli.main(["plan", "--model", str(tiny_llama_dir), "--suite", str(suite)]) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert str(suite) in err and "unknown key 'perplexty'" in err and "did you mean 'perplexity'" in err

    data["perplexity"] = data.pop("perplexty")
    data["schemes"] = ["baseline", "gtpq"]
    suite.write_text(yaml.safe_dump(data))
    assert cli.main(["plan", "--model", str(tiny_llama_dir), "--suite", str(suite)]) == cli.BAD_INPUT
    assert "Unknown scheme 'gtpq'. Did you mean 'gptq'?" in capsys.readouterr().err

    assert cli.main(["plan", "--model", str(tiny_llama_dir), "--suite", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_user_model_file_with_a_relative_source(tmp_path, capsys, tiny_llama_dir, monkeypatch):
    from pipelines.recipes.models import resolve_model

    monkeypatch.setenv("QEVAL_RUNS_DIR", str(tmp_path / "runs"))
    shutil.copytree(tiny_llama_dir, tmp_path / "ckpt")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"source": "./ckpt", "dtype": "float32",
                                                        "default_suite": "smoke"}))
    recipe = resolve_model(str(tmp_path / "tiny.yaml"))
    assert recipe.name == "tiny" and recipe.source == str((tmp_path / "ckpt").resolve())

    # A local path without config.json: the cause and the fix, exit 2, before any work.
    (tmp_path / "ckpt" / "config.json").unlink()
    assert cli.main(["plan", "--model", str(tmp_path / "tiny.yaml"), "--suite", "smoke"]) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert "has no config.json" in err and "save_pretrained" in err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- qeval plan


def plan_text(capsys, model_dir: Path, suite: Path, *extra: str) -> str:
    assert cli.main(["plan", "--no-track", "--model", str(model_dir), "--suite", str(suite), *extra]) == 0
    return capsys.readouterr().out


def stage_line(text: str, scheme: str, stage: str) -> str:
    block = text[text.index(f"\n{scheme}\n"):]
    return next(line for line in block.splitlines() if line.strip().startswith(stage + " "))


@pytest.mark.slow
def test_plan_of_a_finished_sweep_is_all_cached_and_writes_nothing(user_sweep, capsys, monkeypatch):
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(user_sweep["runs"]))
    before = tree_digest(user_sweep["runs"])
    text = plan_text(capsys, user_sweep["model_dir"], user_sweep["suite"])
    assert "nothing to run: every stage is cached" in text
    for scheme in ("baseline", "my-fp8"):
        for stage in ("quantize", "evaluate", "benchmark"):
            assert "cached" in stage_line(text, scheme, stage)
    assert "quantizer   fp8" in text
    assert tree_digest(user_sweep["runs"]) == before


@pytest.mark.slow
def test_plan_names_the_recipe_change_and_estimates_from_the_probe(user_sweep, capsys, monkeypatch):
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(user_sweep["runs"]))
    before = tree_digest(user_sweep["runs"])
    # As make's SET passes it: two items in one string.
    text = plan_text(capsys, user_sweep["model_dir"], user_sweep["suite"],
                     "--set", "perplexity.max_windows=2 benchmark.iters=2")
    line = stage_line(text, "my-fp8", "evaluate")
    assert "recipe changed: perplexity.max_windows 1→2" in line and "(probe)" in line
    assert "recipe changed: benchmark.iters 1→2" in stage_line(text, "my-fp8", "benchmark")
    assert "cached" in stage_line(text, "my-fp8", "quantize")
    assert tree_digest(user_sweep["runs"]) == before


@pytest.mark.slow
def test_plan_says_library_upgraded_failed_earlier_and_no_result(user_sweep, capsys, monkeypatch, tmp_path):
    from pipelines.rundir import Manifest, scheme_dir

    runs = tmp_path / "runs"
    shutil.copytree(user_sweep["runs"], runs)
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(runs))
    model = user_sweep["model"]
    # A run made under an older torch: its key and recorded versions differ from today's.
    path = runs / model / "baseline" / "manifest.json"
    data = json.loads(path.read_text())
    data["stages"]["benchmark"]["key"] = "key-under-an-older-torch"
    data["stages"]["benchmark"]["versions"]["torch"] = "2.0.0"
    path.write_text(json.dumps(data))
    Manifest(scheme_dir(model, "my-fp8")).fail("evaluate", "RuntimeError: out of memory")
    scheme_file = user_sweep["suite"].parent / "my-fp8.yaml"
    text = plan_text(capsys, user_sweep["model_dir"], user_sweep["suite"], "--schemes", f"baseline,{scheme_file},int8")
    assert "library upgraded: torch 2.0.0→" in stage_line(text, "baseline", "benchmark")
    assert "stage failed earlier" in stage_line(text, "my-fp8", "evaluate")
    assert "no result" in stage_line(text, "int8", "quantize")
    assert "no result" in stage_line(text, "int8", "evaluate")


@pytest.mark.slow
def test_estimates_come_from_the_probe_and_grow_with_the_model(user_sweep, monkeypatch, tmp_path):
    """The estimate is computed from this machine's compute probe and the suite's token counts;
    without a probe (CUDA, a forced capability) it scales another model's measured time."""
    from pipelines.execution import estimate
    from pipelines.execution.plan import SweepOptions
    from pipelines.execution.preview import preview

    monkeypatch.setenv("QEVAL_RUNS_DIR", str(user_sweep["runs"]))
    bigger = tmp_path / "bigger"
    shutil.copytree(user_sweep["model_dir"], bigger)
    config = json.loads((bigger / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (bigger / "config.json").write_text(json.dumps(config))

    def evaluate_stage(model_dir):
        pv = preview(SweepOptions(model=str(model_dir), suite=str(user_sweep["suite"]), track=False, force=True))
        return next(s for s in pv.schemes[0].stages if s.stage == "evaluate")

    small, big = evaluate_stage(user_sweep["model_dir"]), evaluate_stage(bigger)
    assert small.estimate_from == big.estimate_from == "probe"
    assert big.estimate_s > small.estimate_s > estimate.FIXED_S["evaluate"]  # more layers, more compute

    # A suite that states a budget its estimate is over warns before anything runs.
    tight = user_sweep["suite"].parent / "tight.yaml"  # beside it: its scheme files are relative
    suite = yaml.safe_load(user_sweep["suite"].read_text())
    tight.write_text(yaml.safe_dump({**suite, "name": "tight", "time_budget_min": 0.1}))
    pv = preview(SweepOptions(model=str(bigger), suite=str(tight), track=False, force=True))
    assert pv.budget_min == 0.1
    assert any(n.startswith("WARNING: about") and "over suite tight's budget of 0.1 min" in n for n in pv.notes)
    # The total is the stages' estimates plus the sweep's own time (plan, workers, sign-off, MLflow).
    stages_s = sum(s.estimate_s for sp in pv.schemes for s in sp.stages if s.will_run)
    assert pv.estimate()[0] == pytest.approx(stages_s + estimate.sweep_overhead_s(len(pv.schemes)))

    monkeypatch.setattr(estimate, "rates_of", lambda recipe, params: None)
    stage = evaluate_stage(bigger)
    assert stage.estimate_from == f"{user_sweep['model']} scaled by parameters"
    base = json.loads((user_sweep["runs"] / user_sweep["model"] / "baseline" / "manifest.json").read_text())
    assert stage.estimate_s > base["stages"]["evaluate"]["duration_s"]


def test_dry_run_writes_nothing(tmp_path, capsys, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(tmp_path / "runs"))
    suite = write_user_recipes(tmp_path / "mine")
    assert cli.main(["run", "--dry-run", "--no-track", "--model", str(tiny_llama_dir), "--suite", str(suite)]) == 0
    out = capsys.readouterr().out
    assert "no result" in out and "Nothing was written" in out
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- qeval list


def test_list_models_suites_and_tasks(capsys, tmp_path):
    assert cli.main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "embedded:smollm2-135m" in out and "gated on the Hub" in out
    assert cli.main(["list", "suites"]) == 0
    assert "quick" in capsys.readouterr().out
    shutil.copy(REPO_ROOT / "evals" / "tasks" / "qeval_arc_easy.yaml", tmp_path / "mine.yaml")
    text = (tmp_path / "mine.yaml").read_text().replace("task: qeval_arc_easy", "task: my_arc")
    (tmp_path / "mine.yaml").write_text(text)
    assert cli.main(["list", "tasks", "--tasks-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "piqa" in out and "my_arc" in out and str(tmp_path / "mine.yaml") in out


def test_list_schemes_says_library_bits_and_whether_it_runs_here(capsys, monkeypatch):
    assert cli.main(["list", "schemes", "--device", "cpu"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "gptqmodel" in rows["gptq"] and " 4 " in rows["gptq"] and "yes (cpu)" in rows["gptq"]
    assert "bitsandbytes" in rows["int8"] and " 8 " in rows["int8"]
    # A bitsandbytes whose native library does not load (a true system edge): "no", with the fix.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    assert cli.main(["list", "schemes", "--device", "cpu"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "no: bitsandbytes cannot load here" in rows["nf4"] and "yes (cpu)" in rows["fp8"]


# ----------------------------------------------------------------------------- models that cannot be fetched


def test_offline_without_the_model_in_the_cache_is_bad_input_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(tmp_path / "runs"))
    start = time.monotonic()
    assert cli.main(["plan", "--model", "llama-2-7b"]) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert time.monotonic() - start < 5
    assert "no network: HF_HUB_OFFLINE is set" in err and "meta-llama/Llama-2-7b-hf" in err and "Fix:" in err


def test_an_unreachable_hub_is_bad_input_without_retries(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on: connection refused, as on a closed network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    proc = run_qeval("plan", "--model", "huggyllama/llama-7b", timeout=120,
                     env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{port}",
                          "HF_HUB_CACHE": str(tmp_path / "cache"), "QEVAL_RUNS_DIR": str(tmp_path / "runs")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot reach the Hub" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60  # interpreter start included; no 27 s of retries


def hub_error(cls, status: int):
    import httpx

    response = httpx.Response(status, request=httpx.Request("HEAD", "https://huggingface.co/x/y/resolve/main/config.json"))
    return cls(f"{status} error", response=response)


def test_gated_and_unknown_hub_ids_name_the_cause_and_the_fix():
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from pipelines.recipes.reachable import classify_hub_error

    gated = classify_hub_error(hub_error(GatedRepoError, 401), "meta-llama/Llama-3.1-8B", None, has_token=False)
    assert gated.startswith("gated repository") and "HF_TOKEN" in gated and "licence" in gated
    granted_not = classify_hub_error(hub_error(GatedRepoError, 403), "meta-llama/Llama-3.1-8B", None, has_token=True)
    assert "no access" in granted_not
    unknown = classify_hub_error(hub_error(RepositoryNotFoundError, 404), "meta-lama/Llama-3.1-8B", None,
                                 has_token=False)
    assert unknown.startswith("unknown Hub id 'meta-lama/Llama-3.1-8B'") and "spelling" in unknown


# ----------------------------------------------------------------------------- make variables


def test_make_variables_reach_the_cli():
    out = subprocess.run(
        ["make", "-n", "plan", "SET=perplexity.seq_len=64;tasks.limit=3", "DEVICE=cpu", "NO_TRACK=1",
         "DATA_DIR=/data", "EXPERIMENT=mine"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "--set 'perplexity.seq_len=64;tasks.limit=3'" in out and "--set device=cpu" in out
    assert "--no-track" in out and "--data-dir /data" in out and "--experiment mine" in out
    out = subprocess.run(["make", "-n", "compare", "SWEEP=20250101-x"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "--sweep 20250101-x" in out
    assert cli.split_set_items(["a.b=1;c=2 d={x: 1, y: 2}"]) == ["a.b=1", "c=2", "d={x: 1, y: 2}"]


# ----------------------------------------------------------------------------- a log for people

WARN_SCRIPT = r"""
import sys, tempfile, torch
from pipelines.logconfig import configure_logging
configure_logging(quiet=sys.argv[1] == "quiet")
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                             device_map="cpu", dtype=torch.float32)
with torch.inference_mode():
    for _ in range(2):
        model(torch.arange(1, 9).unsqueeze(0))
"""


def test_a_repeated_library_warning_is_shown_once_with_a_count(tiny_llama_dir):
    """bitsandbytes' int8 matmul warns on every layer of every forward; the log shows it once."""
    def run(mode: str) -> str:
        proc = subprocess.run([sys.executable, "-c", WARN_SCRIPT, mode, str(tiny_llama_dir)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    err = run("normal")
    assert err.count("MatMul8bitLt: inputs will be cast") == 2  # the warning, and the summary line
    summary = next(line for line in err.splitlines() if line.startswith("qeval: suppressed repeats"))
    # 2 layers x 7 linear modules x 2 forwards = 28 calls: 1 shown, 27 counted.
    assert "MatMul8bitLt" in summary and " x27" in summary
    quiet = run("quiet")
    assert "MatMul8bitLt" not in quiet and " WARNING " not in quiet


# ----------------------------------------------------------------------------- the default model's verdict


def test_the_default_model_says_why_inconclusive_is_expected(tmp_path, monkeypatch):
    from pipelines.errors import EXIT_INCONCLUSIVE
    from pipelines.execution.explain import verdict_lines
    from pipelines.execution.plan import SweepOptions, plan, write_plan

    monkeypatch.setenv("QEVAL_RUNS_DIR", str(tmp_path / "runs"))
    opts = SweepOptions(model="smollm2-135m", schemes=["baseline"], track=False)
    write_plan(plan(opts), opts)  # the recipe a real sweep of the default model writes
    lines = verdict_lines("smollm2-135m", {"overall": "INCONCLUSIVE"}, EXIT_INCONCLUSIVE)
    assert lines[0].startswith("exit code 3: INCONCLUSIVE")
    note = lines[-1]
    assert "quick suite" in note and "30 examples per task" in note and "0.97" in note and "SUITE=standard" in note
    assert not any("Expected on" in line for line in verdict_lines("other", None, EXIT_INCONCLUSIVE))
