"""Bad input: a message that names the problem and the fix, exit code 2, nothing written or lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipelines import cli


def snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def edit(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


def run_bad(capsys, *args: str) -> str:
    code = cli.main(["run", "--quiet", "--no-track", *args])
    err = capsys.readouterr().err
    assert code == cli.BAD_INPUT, err
    return err


def test_unknown_model_lists_the_aliases(capsys, runs):
    err = run_bad(capsys, "--model", "llama-8b")
    assert "Unknown model 'llama-8b'" in err and "llama-3.1-8b" in err and "smollm2-135m" in err
    assert not runs.exists()


def test_unknown_scheme_suggests_the_closest(capsys, runs, tiny_llama_dir):
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--schemes", "gtpq")
    assert "Unknown scheme 'gtpq'. Did you mean 'gptq'?" in err and "Available:" in err
    assert not runs.exists()


def test_typo_in_a_recipe_key_is_named(capsys, runs, recipes, tiny_llama_dir):
    suite = recipes / "suites" / "smoke.yaml"
    data = yaml.safe_load(suite.read_text())
    data["perplexity"]["seqlen"] = data["perplexity"].pop("seq_len")
    suite.write_text(yaml.safe_dump(data))
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--suite", "smoke")
    assert "perplexity.seqlen" in err and "did you mean 'seq_len'" in err
    assert not runs.exists()


def test_typo_in_scheme_params_is_named(capsys, runs, recipes, tiny_llama_dir):
    edit(recipes / "schemes" / "gptq.yaml", params={"bits": 4, "grup_size": 128})
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--schemes", "gptq", "--suite", "smoke")
    assert "grup_size" in err and "group_size" in err


def test_missing_data_file_names_the_file(capsys, runs, tmp_path, data_dir, tiny_llama_dir):
    partial = tmp_path / "data"
    for sub in ("c4", "arc_easy", "gsm8k"):
        shutil.copytree(data_dir / sub, partial / sub)
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--suite", "smoke", "--data-dir", str(partial))
    assert "wikitext-2-raw/wiki.test.raw" in err and "QEVAL_DATA_DIR" in err
    assert not runs.exists()


def test_bad_input_keeps_earlier_results(capsys, runs, tiny_llama_dir):
    code = cli.main(["quantize", "--quiet", "--model", str(tiny_llama_dir), "--scheme", "baseline", "--suite", "smoke",
                     "--tasks", ""])
    assert code == 0, capsys.readouterr().err
    before = snapshot(runs)
    assert any(name.endswith("quantize.json") for name in before)
    run_bad(capsys, "--model", str(tiny_llama_dir), "--schemes", "nope")
    assert snapshot(runs) == before


def test_group_size_that_does_not_divide_a_layer(capsys, runs, recipes):
    # SmolLM2's hidden size is 576: its recipe sets group size 64; without it, 128 must be refused.
    edit(recipes / "models" / "smollm2-135m.yaml", scheme_overrides={})
    err = run_bad(capsys, "--model", "smollm2-135m", "--schemes", "gptq", "--suite", "smoke")
    assert "group_size 128 does not divide" in err and "use group_size 64" in err
    assert not runs.exists()


@pytest.mark.parametrize("scheme,bits", [("gptq", 3), ("awq", 8)])
def test_bits_a_scheme_does_not_support(capsys, runs, recipes, tiny_llama_dir, scheme, bits):
    path = recipes / "schemes" / f"{scheme}.yaml"
    data = yaml.safe_load(path.read_text())
    data["params"]["bits"] = bits
    path.write_text(yaml.safe_dump(data))
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--schemes", scheme, "--suite", "smoke")
    assert f"not {bits}" in err


def test_ignore_pattern_that_matches_nothing(capsys, runs, recipes, tiny_llama_dir):
    edit(recipes / "schemes" / "nf4.yaml", ignore=["lm_head", "model.layers.*.mlp.gate"])
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--schemes", "nf4", "--suite", "smoke")
    assert "model.layers.*.mlp.gate" in err and "matches no linear layer" in err


def test_unrecognised_prequantized_format(capsys, runs, tiny_llama_dir):
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--schemes", "prequantized",
                  "--prequantized", str(tiny_llama_dir), "--suite", "smoke")
    assert "format not recognised" in err and "gptq" in err


def test_perplexity_window_longer_than_the_context(capsys, runs, tiny_llama_dir):
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--suite", "smoke", "--set", "perplexity.seq_len=4096")
    assert "longer than" in err and "context (512 tokens)" in err


def test_unknown_task(capsys, runs, tiny_llama_dir):
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--suite", "smoke", "--tasks", "arc_eassy")
    assert "arc_eassy" in err and "arc_easy" in err


def test_task_directory_with_broken_yaml(capsys, runs, tmp_path, tiny_llama_dir):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mine.yaml").write_text("task: mine\ndataset_path: [unclosed\n")
    err = run_bad(capsys, "--model", str(tiny_llama_dir), "--suite", "smoke", "--tasks-dir", str(tasks),
                  "--tasks", "arc_easy")
    assert "mine.yaml" in err


@pytest.mark.slow  # a real sweep: baseline, nf4 and gptq workers
def test_calibration_set_too_short_fails_only_that_scheme(capsys, runs, tiny_llama_dir):
    code = cli.main(["run", "--quiet", "--no-track", "--model", str(tiny_llama_dir), "--suite", "smoke",
                     "--schemes", "nf4,gptq", "--tasks", "", "--set", "calibration_per_scheme={gptq: {seq_len: 5000000, n_samples: 1}}",
                     "--set", "perplexity.max_windows=1", "--set", "perplexity.seq_len=64",
                     "--set", "benchmark={batch_sizes: [1], iters: 1, warmup: 0, min_time_s: 0}"])
    capsys.readouterr()
    assert code == cli.BAD_INPUT
    import json

    gptq = json.loads((runs / tiny_llama_dir.name / "gptq" / "manifest.json").read_text())
    assert "calibration set too short" in gptq["stages"]["quantize"]["error"]
    nf4 = json.loads((runs / tiny_llama_dir.name / "nf4" / "manifest.json").read_text())
    assert all(nf4["stages"][s]["status"] == "done" for s in ("quantize", "evaluate", "benchmark"))


@pytest.mark.slow  # a real sweep of the baseline
def test_scheme_whose_library_cannot_load_is_skipped_and_recorded(capsys, runs, tiny_llama_dir, monkeypatch):
    import json
    import sys

    # A bitsandbytes whose native library does not load: the import fails (a true system edge).
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    code = cli.main(["run", "--quiet", "--no-track", "--model", str(tiny_llama_dir), "--suite", "smoke",
                     "--schemes", "nf4", "--tasks", "", "--set", "perplexity.max_windows=1",
                     "--set", "perplexity.seq_len=64",
                     "--set", "benchmark={batch_sizes: [1], iters: 1, warmup: 0, min_time_s: 0}"])
    out = capsys.readouterr().out
    assert code == cli.BAD_INPUT
    nf4 = json.loads((runs / tiny_llama_dir.name / "nf4" / "manifest.json").read_text())
    assert nf4["stages"]["quantize"]["status"] == "skipped"
    assert "bitsandbytes cannot load here" in nf4["stages"]["quantize"]["error"]
    assert "pip install bitsandbytes" in nf4["stages"]["quantize"]["error"]
    assert "skipped nf4: bitsandbytes cannot load here" in out
    baseline = json.loads((runs / tiny_llama_dir.name / "baseline" / "manifest.json").read_text())
    assert baseline["stages"]["evaluate"]["status"] == "done"  # the rest of the sweep still ran
