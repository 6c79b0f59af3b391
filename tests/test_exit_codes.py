"""Exit codes a CI script relies on, through the real CLI on a tiny Llama; and what `make quantize` does with them.

0 pass, 1 FAIL verdict, 2 bad input, 3 inconclusive, 4 incomplete, 5 crash (pipelines/errors.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.errors import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_INCOMPLETE, EXIT_PASS

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = ["--suite", "smoke", "--tasks", "", "--set", "perplexity={seq_len: 64, max_windows: 1}",
        "--set", "benchmark={batch_sizes: [1], prompt_lens: [8], gen_lens: [2], iters: 1, warmup: 0, min_time_s: 0}"]


def test_a_bad_recipe_value_is_refused_at_plan_time(capsys, runs, tiny_llama_dir):
    code = cli.main(["run", "--quiet", "--no-track", "--model", str(tiny_llama_dir), "--schemes", "baseline",
                     *TINY, "--set", "benchmark.batch_sizes=[0]"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert "benchmark.batch_sizes" in err and "greater than 0" in err
    assert not runs.exists()  # refused before any work


@pytest.mark.parametrize("setting,named", [
    ("benchmark.gen_lens=[1]", "benchmark.gen_lens"),
    ("tasks.limit=0", "tasks.limit"),
    ("perplexity.stride=16", "stride"),
    ("perplexity.datasets=[wikitext3]", "perplexity.datasets"),
])
def test_other_bad_values_are_refused_at_plan_time(capsys, runs, tiny_llama_dir, setting, named):
    code = cli.main(["run", "--quiet", "--no-track", "--model", str(tiny_llama_dir), *TINY, "--set", setting])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and named in err, err
    assert not runs.exists()


def test_a_limit_for_a_task_not_run_is_refused_at_plan_time(capsys, runs, tiny_llama_dir):
    code = cli.main(["run", "--quiet", "--no-track", "--model", str(tiny_llama_dir), *TINY, "--tasks", "arc_easy",
                     "--set", "tasks.limit={hellaswag: 5}"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "hellaswag" in err, err
    assert not runs.exists()


def test_ray_executor_without_the_extra_names_the_install_command(capsys, runs, tiny_llama_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # the extra is not installed (find_spec sees no module)
    code = cli.main(["run", "--quiet", "--no-track", "--executor", "ray", "--model", str(tiny_llama_dir), *TINY])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert "make setup RAY=1" in err and "Traceback" not in err
    assert not runs.exists()


def test_an_unexpected_error_is_a_crash_not_a_verdict(capsys, runs, tiny_llama_dir, monkeypatch):
    from pipelines.execution import runner

    def broken(*args, **kwargs):  # a bug in the pipeline itself (fault injection; the CLI is under test)
        raise KeyError("a bug")

    monkeypatch.setattr(runner, "run_sweeps", broken)
    code = cli.main(["run", "--quiet", "--no-track", "--model", str(tiny_llama_dir), *TINY])
    err = capsys.readouterr().err
    assert code == EXIT_CRASH
    assert "Traceback" in err and "KeyError" in err
    assert err.strip().splitlines()[-1].startswith("qeval: crash: KeyError")


def test_an_import_that_fails_is_a_crash_not_a_fail_verdict():
    """The thread setup's import once ran outside the try: Python's own exit 1 read as FAIL."""
    probe = ("import sys; sys.modules['pipelines.compute'] = None; from pipelines.cli import main; "
             "raise SystemExit(main(['list', 'suites']))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_CRASH, proc.stderr[-2000:]
    assert "qeval: crash: ModuleNotFoundError" in proc.stderr


def test_a_librarys_sys_exit_is_a_crash_not_a_verdict(capsys, monkeypatch):
    from pipelines import catalog

    def exits(*args, **kwargs):  # a library that calls sys.exit(1) (fault injection at the edge)
        sys.exit(1)

    monkeypatch.setattr(catalog, "rows_for", exits)
    assert cli.main(["list", "suites"]) == EXIT_CRASH
    assert "qeval: crash: SystemExit(1) from a library" in capsys.readouterr().err


@pytest.mark.slow  # real worker processes
def test_stage_command_keeps_the_sweep_and_a_failed_stage_makes_the_sweep_incomplete(capsys, runs, tiny_llama_dir):
    from pipelines.execution.plan import SweepOptions, plan, write_plan

    model = Path(tiny_llama_dir).name
    # A sweep of three schemes is planned (nothing run).
    opts = SweepOptions(model=str(tiny_llama_dir), schemes=["nf4", "int8"], suite="smoke", tasks=[])
    write_plan(plan(opts), opts)
    sweep_path = runs / model / "sweep.json"
    before = sweep_path.read_text()
    others = {s: (runs / model / s / "manifest.json").read_text() for s in ("baseline", "int8")}

    # `qeval quantize --scheme nf4` runs one stage and leaves sweep.json (schemes, id) alone.
    code = cli.main(["quantize", "--quiet", "--model", str(tiny_llama_dir), "--scheme", "nf4", *TINY])
    assert code == EXIT_PASS, capsys.readouterr().err
    assert sweep_path.read_text() == before
    nf4 = json.loads((runs / model / "nf4" / "manifest.json").read_text())
    assert nf4["sweep_id"] == json.loads(before)["sweep_id"] and nf4["stages"]["quantize"]["status"] == "done"
    assert {s: (runs / model / s / "manifest.json").read_text() for s in others} == others  # other schemes untouched

    # The checkpoint is damaged on disk: loading it fails (a library error, not bad input).
    weights = next((runs / model / "nf4" / "quantize" / "model").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    code = cli.main(["evaluate", "--quiet", "--model", str(tiny_llama_dir), "--scheme", "nf4", *TINY])
    capsys.readouterr()
    assert code == EXIT_INCOMPLETE
    assert sweep_path.read_text() == before

    # A sweep with that scheme: the baseline still finishes, then the sweep exits 4.
    code = cli.main(["run", "--quiet", "--no-track", "--model", str(tiny_llama_dir), "--schemes", "nf4", *TINY])
    out = capsys.readouterr().out
    assert code == EXIT_INCOMPLETE, out
    assert "FAILED nf4" in out
    baseline = json.loads((runs / model / "baseline" / "manifest.json").read_text())
    assert {s: e["status"] for s, e in baseline["stages"].items()} == dict.fromkeys(
        ("quantize", "evaluate", "benchmark", "serve"), "done")
    nf4 = json.loads((runs / model / "nf4" / "manifest.json").read_text())
    assert nf4["stages"]["evaluate"]["status"] == "failed"


def test_a_fresh_stage_command_creates_the_sweep_of_its_scheme(capsys, runs, tiny_llama_dir):
    code = cli.main(["quantize", "--quiet", "--model", str(tiny_llama_dir), "--scheme", "baseline", *TINY])
    assert code == EXIT_PASS, capsys.readouterr().err
    sweep = json.loads((runs / Path(tiny_llama_dir).name / "sweep.json").read_text())
    assert sweep["schemes"] == ["baseline"] and sweep["sweep_id"]


@pytest.mark.parametrize("code,make_ok,meaning", [
    (0, True, "PASS"), (1, True, "FAIL"), (3, True, "INCONCLUSIVE"),
    (2, False, "bad input"), (4, False, "incomplete"), (5, False, "crashed"),
])
def test_make_quantize_succeeds_on_a_verdict_and_fails_otherwise(tmp_path, code, make_ok, meaning):
    """The Makefile's mapping, with qeval replaced by a script that exits with the code."""
    fake = tmp_path / "qeval"
    fake.write_text(f"#!/bin/sh\nexit {code}\n")
    fake.chmod(0o755)
    out = subprocess.run(["make", "--no-print-directory", "-C", str(REPO_ROOT), "quantize", f"QEVAL={fake}"],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode == 0) == make_ok, out.stdout + out.stderr
    assert meaning in out.stdout + out.stderr
    if not make_ok:
        assert f"exit code {code}" in out.stdout + out.stderr
