"""Inputs that change results and that the keys once missed: the base weights, the Hub commit,
the tokenizer, the serving engine's identity, library versions and the CPU a native build is for."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_keys import SMOKE, changed, copy_data

from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.stages import keys
from pipelines.stages.common import StageContext

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


@pytest.fixture
def model_copy(tmp_path, monkeypatch, tiny_llama_dir, data_dir):
    """A private copy of the tiny Llama (to update in place), a runs root and the data."""
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("QEVAL_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_llama_dir, folder)
    return {"model": str(folder), "data": copy_data(data_dir, tmp_path / "data"), "tmp": tmp_path}


def context(env, scheme: str = "gptq", model: str | None = None, overrides=None) -> StageContext:
    from pipelines.recipes import deep_merge

    opts = SweepOptions(model=model or env["model"], schemes=[scheme], suite="smoke", tasks=[],
                        data_dir=str(env["data"]), overrides=deep_merge(SMOKE, overrides or {}), quiet=True)
    p = plan(opts)
    write_plan(p, opts)
    return StageContext.from_run_dir(p.model, scheme)


def test_a_local_model_updated_in_place_changes_the_quantize_key(model_copy):
    from transformers import AutoModelForCausalLM

    before = keys.stage_keys(context(model_copy))
    folder = Path(model_copy["model"])
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)  # same path, same config, new weights
    model.save_pretrained(folder)
    after = keys.stage_keys(context(model_copy))
    assert changed(before, after) == {"quantize", "evaluate", "benchmark", "serve"}


def test_the_calibration_cache_follows_the_tokenizer_files(model_copy):
    before = keys.calibration_cache_key(context(model_copy))
    tokenizer = Path(model_copy["model"]) / "tokenizer.json"
    text = tokenizer.read_text()
    assert '"</s>"' in text
    tokenizer.write_text(text.replace('"</s>"', '"<|end|>"', 1))  # same path, another end token
    assert keys.calibration_cache_key(context(model_copy)) != before


def hub_cache(root: Path, repo: str, model_dir: Path, commit: str) -> None:
    """A Hugging Face cache holding ``repo`` at ``commit``, with refs/main pointing there."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)


def test_a_hub_revision_is_pinned_to_its_commit_at_plan_time(model_copy, monkeypatch, tiny_llama_dir):
    """Offline, the commit comes from the cache's refs/main; the recipe records it and the
    branch, and when main moves to another commit the quantize key moves with it."""
    from pipelines.recipes import ResolvedRecipe

    cache = model_copy["tmp"] / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read once, at import
    hub_cache(cache, "qeval-test/tiny", tiny_llama_dir, COMMIT_A)
    ctx = context(model_copy, model="qeval-test/tiny")
    recipe = ResolvedRecipe.from_yaml(ctx.sdir.recipe_path)
    assert (recipe.model.revision, recipe.model.requested_revision) == (COMMIT_A, "main")
    before = keys.stage_keys(ctx)

    hub_cache(cache, "qeval-test/tiny", tiny_llama_dir, COMMIT_B)  # main moved
    after = keys.stage_keys(context(model_copy, model="qeval-test/tiny"))
    assert changed(before, after) == {"quantize", "evaluate", "benchmark", "serve"}


def test_the_serve_key_follows_the_engine_threads_and_the_vllm_version(model_copy, tmp_path, monkeypatch):
    base = keys.serve_key(context(model_copy, "baseline"))
    assert keys.serve_key(context(model_copy, "baseline", overrides={"serve": {"threads": 7}})) != base

    def vllm_reporting(version: str) -> str:
        script = tmp_path / f"vllm-{version}"
        script.write_text(f"#!/bin/sh\necho {version}\n")  # what `vllm --version` prints
        script.chmod(0o755)
        return str(script)

    on_vllm = {"serve": {"engine": "vllm", "vllm_command": vllm_reporting("0.9.1")}}
    keys._vllm_version.cache_clear()
    first = keys.serve_key(context(model_copy, "baseline", overrides=on_vllm))
    on_vllm["serve"]["vllm_command"] = vllm_reporting("0.10.0")
    assert keys.serve_key(context(model_copy, "baseline", overrides=on_vllm)) != first


def test_versions_that_change_numbers_are_tracked():
    from pipelines.environment import library_versions

    versions = library_versions()
    for dist in ("tokenizers", "safetensors", "numpy", "torch", "transformers"):
        assert versions[dist] not in ("", "missing"), dist


def test_the_llama_cpp_build_is_named_for_the_cpu_it_was_compiled_for(monkeypatch):
    from pipelines.llamacpp import tools

    here = tools.build_dir_name()
    assert tools.cpu_build_features()  # read from /proc/cpuinfo
    monkeypatch.setattr(tools, "cpu_build_features", lambda: ["sse4_2"])  # an older CPU
    assert tools.build_dir_name() != here
