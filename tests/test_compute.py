"""The compute dtype: the real probe and resolver on this machine, the other branches with a forced
CPU, and the choice recorded in the recipe, the manifest, every result file, the stage keys, the
MLflow params and the report of a real (tiny) sweep."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines import compute

AVX2_ONLY = compute.CpuFeatures(model="AVX2-only test CPU", flags={"avx2": True, "avx512f": False},
                                capability="AVX2", native_bf16=False, native_fp16=False)
GIB = 2**30


# ----------------------------------------------------------------------------- the resolver


def test_real_probe_measures_every_shape_and_dtype_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("QEVAL_CACHE_DIR", str(tmp_path))
    shapes = compute.model_shapes(64, 128, 256, prefill_tokens=32)
    first = compute.probe(shapes, threads=1)
    assert set(first["gflops"]) == {"prefill", "decode", "lm_head"}
    for row in first["gflops"].values():
        assert set(row) == set(compute.DTYPES) and all(v > 0 for v in row.values())
    cached = list((tmp_path / "compute-probe").glob("*.json"))
    assert len(cached) == 1
    # A second call reads the file: the figures are those stored, not a new measurement.
    stored = json.loads(cached[0].read_text())
    stored["gflops"]["prefill"]["float32"] = 12345.0
    cached[0].write_text(json.dumps(stored))
    assert compute.probe(shapes, threads=1)["gflops"]["prefill"]["float32"] == 12345.0
    # Another thread count is another machine configuration: probed again, in its own file.
    compute.probe(shapes, threads=2)
    assert len(list((tmp_path / "compute-probe").glob("*.json"))) == 2


def test_resolver_on_this_machine_follows_its_real_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("QEVAL_CACHE_DIR", str(tmp_path))
    features = compute.cpu_features()
    decision = compute.resolve("auto", "bfloat16", "cpu", threads=1, n_params=10**6)
    assert decision.cpu_capability == features.capability and decision.native_bf16 == features.native_bf16
    if not features.native_bf16:
        assert decision.dtype == "float32" and "not native" in decision.reason
        return
    ratio = compute.speed_ratio(decision.probe_gflops, "bfloat16")
    assert decision.dtype == ("bfloat16" if ratio >= 1.0 else "float32")
    assert f"{ratio:.2f}x" in decision.reason


def test_avx2_only_cpu_computes_in_float32_and_says_why():
    slow_bf16 = {"prefill": {"float32": 24.0, "bfloat16": 0.73, "float16": 0.68},
                 "decode": {"float32": 6.5, "bfloat16": 0.95, "float16": 0.55},
                 "lm_head": {"float32": 5.4, "bfloat16": 0.17, "float16": 0.14}}
    decision = compute.resolve("auto", "bfloat16", "cpu", threads=2, features=AVX2_ONLY, gflops=slow_bf16,
                               n_params=135 * 10**6, memory_bytes=4 * GIB)
    assert decision.dtype == "float32"
    assert "not native" in decision.reason and "AVX2" in decision.reason and not decision.warnings


def test_native_bf16_that_probes_slower_than_float32_is_not_chosen():
    native = dataclasses.replace(AVX2_ONLY, capability="AVX512", native_bf16=True)
    slower = {"prefill": {"float32": 100.0, "bfloat16": 80.0, "float16": 1.0},
              "decode": {"float32": 20.0, "bfloat16": 20.0, "float16": 1.0},
              "lm_head": {"float32": 10.0, "bfloat16": 10.0, "float16": 1.0}}
    decision = compute.resolve("auto", "bfloat16", "cpu", threads=2, features=native, gflops=slower,
                               n_params=10**6, memory_bytes=4 * GIB)
    assert decision.dtype == "float32" and "0.84x float32" in decision.reason
    faster = {**slower, "prefill": {"float32": 100.0, "bfloat16": 300.0, "float16": 1.0}}
    assert compute.resolve("auto", "bfloat16", "cpu", threads=2, features=native, gflops=faster,
                           n_params=10**6).dtype == "bfloat16"


def test_float32_that_would_not_fit_keeps_the_storage_dtype_with_a_warning():
    decision = compute.resolve("auto", "bfloat16", "cpu", threads=2, features=AVX2_ONLY, gflops=None,
                               n_params=8 * 10**9, memory_bytes=24 * GIB)
    assert decision.dtype == "bfloat16" and "would not fit" in decision.reason
    assert len(decision.warnings) == 1 and "GGUF" in decision.warnings[0] and "SUITE=smoke" in decision.warnings[0]


def test_an_explicit_compute_dtype_and_a_float32_checkpoint_are_kept():
    assert compute.resolve("bfloat16", "bfloat16", "cpu", features=AVX2_ONLY).dtype == "bfloat16"
    assert compute.resolve("auto", "float32", "cpu", features=AVX2_ONLY).dtype == "float32"


def test_shape_weights_favour_prefill():
    # bf16 GEMM 3x faster, GEMVs half the speed: what an AVX512-BF16 CPU measures; bf16 wins.
    gflops = {"prefill": {"float32": 100.0, "bfloat16": 300.0}, "decode": {"float32": 20.0, "bfloat16": 10.0},
              "lm_head": {"float32": 10.0, "bfloat16": 5.0}}
    assert compute.speed_ratio(gflops, "bfloat16") == pytest.approx(3**0.8 * 0.5**0.2)


def test_thread_count_is_qeval_threads_else_the_physical_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("QEVAL_THREADS", "3")
    assert compute.thread_count() == 3
    monkeypatch.setenv("QEVAL_THREADS", "zero")
    assert compute.thread_count() == compute.physical_cores()
    monkeypatch.delenv("QEVAL_THREADS")
    assert 1 <= compute.physical_cores() <= len(__import__("os").sched_getaffinity(0))


# ----------------------------------------------------------------------------- a real sweep

MODEL = "tiny-compute"


@pytest.fixture(scope="module")
def forced_avx2_sweep(tmp_path_factory, tiny_llama_dir):
    """A tiny baseline + int8-wo + awq sweep planned as on an AVX2-only CPU (the real probe is not
    asked: the forced CPU has no native bf16), run by the real stages, then signed off."""
    from pipelines.execution.local import WORKER_OK, run_stages_in_process
    from pipelines.execution.plan import SweepOptions, plan, write_plan
    from pipelines.recipes import resolve as recipe_resolve
    from pipelines.stages import signoff

    root = tmp_path_factory.mktemp("compute_sweep")
    shutil.copytree(recipe_resolve.RECIPES_DIR, root / "recipes")
    recipe = {"name": MODEL, "source": str(tiny_llama_dir), "dtype": "bfloat16", "target_device": "cpu",
              "default_suite": "smoke"}
    (root / "recipes" / "models" / f"{MODEL}.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recipe_resolve, "RECIPES_DIR", root / "recipes")
        mp.setenv("QEVAL_RUNS_DIR", str(root / "runs"))
        mp.setattr(compute, "cpu_features", lambda: AVX2_ONLY)
        opts = SweepOptions(model=MODEL, schemes=["baseline", "int8-wo", "awq"], suite="smoke", limit=4, quiet=True,
                            track=False, overrides={"tasks": {"names": []}, "perplexity": {"max_windows": 2}})
        p = plan(opts)
        write_plan(p, opts)
        for scheme in ("baseline", "int8-wo", "awq"):
            assert run_stages_in_process(MODEL, scheme, ("quantize", "evaluate"), quiet=True) == WORKER_OK
        result = signoff.run(MODEL, ["baseline", "int8-wo", "awq"])
    return root / "runs" / MODEL, p, result


def test_the_plan_resolves_float32_on_an_avx2_cpu_and_every_recipe_records_it(forced_avx2_sweep):
    mdir, p, _ = forced_avx2_sweep
    for scheme in ("baseline", "int8-wo"):
        saved = yaml.safe_load((mdir / scheme / "recipe.yaml").read_text())["model"]
        assert saved["dtype"] == "bfloat16" and saved["compute_dtype"] == "auto"
        assert saved["compute"]["dtype"] == "float32" and saved["compute"]["cpu_capability"] == "AVX2"
        assert "not native" in saved["compute"]["reason"]


@pytest.mark.slow
def test_manifest_and_result_files_record_the_compute_choice(forced_avx2_sweep):
    mdir, _, _ = forced_avx2_sweep
    manifest = json.loads((mdir / "int8-wo" / "manifest.json").read_text())
    for stage in ("quantize", "evaluate"):
        entry = manifest["stages"][stage]
        assert entry["compute"]["dtype"] == "float32" and entry["compute"]["cpu_capability"] == "AVX2"
        assert entry["compute"]["threads"] == entry["torch_threads"]
    quantize = json.loads((mdir / "int8-wo" / "quantize" / "quantize.json").read_text())
    assert quantize["dtype"] == "float32" and quantize["compute"]["dtype"] == "float32"
    ppl = json.loads((mdir / "int8-wo" / "eval" / "perplexity.json").read_text())
    # The model really ran in float32 (perplexity records the loaded parameters' dtype).
    assert all(r["dtype"] == "float32" and r["compute"]["dtype"] == "float32" for r in ppl.values())
    fid = json.loads((mdir / "baseline" / "eval" / "fidelity.json").read_text())
    assert fid["reference"]["dtype"] == "float32" and fid["reference"]["storage_dtype"] == "bfloat16"
    floor = next(iter(fid["noise_floor"].values()))
    assert "bfloat16-rounded weights, computed in float32" in floor["comparison"]
    # The baseline checkpoint stays in its storage precision: the stages cast it when they load.
    config = json.loads((mdir / "baseline" / "quantize" / "model" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


@pytest.mark.slow
def test_awq_quantizes_in_bf16_but_is_evaluated_in_the_sweeps_float32(forced_avx2_sweep):
    """gptqmodel packs AWQ only in fp16/bf16: the quantize step says so, everything after it runs
    in the sweep's float32 (the AWQ checkpoint really loads and runs in float32)."""
    from pipelines.stages.signoff import compute_caveats

    mdir, p, _ = forced_avx2_sweep
    entry = json.loads((mdir / "awq" / "manifest.json").read_text())["stages"]
    assert entry["quantize"]["compute"]["quantize_dtype"] == "bfloat16"
    assert "AwqTorchLinear" in entry["quantize"]["compute"]["quantize_reason"]
    assert entry["evaluate"]["compute"]["dtype"] == "float32"
    assert "quantize_dtype" not in entry["evaluate"]["compute"]
    ppl = json.loads((mdir / "awq" / "eval" / "perplexity.json").read_text())
    assert all(r["dtype"] == "float32" for r in ppl.values())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QEVAL_RUNS_DIR", str(mdir.parent))
        caveats = compute_caveats(MODEL, ["int8-wo", "awq"], p.recipes["awq"])
    assert [c for c in caveats if c.startswith("awq: quantized in bfloat16")]
    assert not [c for c in caveats if c.startswith(("baseline", "int8-wo"))]


@pytest.mark.slow
def test_stage_keys_differ_between_compute_dtypes(forced_avx2_sweep):
    from pipelines.rundir import scheme_dir
    from pipelines.stages.common import StageContext
    from pipelines.stages.keys import stage_keys

    mdir, p, _ = forced_avx2_sweep
    recipe = p.recipes["int8-wo"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QEVAL_RUNS_DIR", str(mdir.parent))
        fp32 = StageContext(MODEL, "int8-wo", recipe, scheme_dir(MODEL, "int8-wo"))
        bf16_recipe = recipe.model_copy(deep=True)
        bf16_recipe.model.compute.dtype = "bfloat16"
        bf16 = StageContext(MODEL, "int8-wo", bf16_recipe, scheme_dir(MODEL, "int8-wo"))
        keys32, keys16 = stage_keys(fp32), stage_keys(bf16)
    assert all(keys32[s] != keys16[s] for s in keys32)
    manifest = json.loads((mdir / "int8-wo" / "manifest.json").read_text())
    assert manifest["stages"]["quantize"]["key"] == keys32["quantize"]


@pytest.mark.slow
def test_mlflow_params_and_report_name_the_compute_dtype(forced_avx2_sweep):
    from pipelines.rundir import scheme_dir
    from pipelines.tracking.params import scheme_files, scheme_params

    mdir, _, result = forced_avx2_sweep
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QEVAL_RUNS_DIR", str(mdir.parent))
        sdir = scheme_dir(MODEL, "int8-wo")
        params = scheme_params(sdir, scheme_files(sdir))
    assert params["compute.dtype"] == "float32" and params["compute.cpu_capability"] == "AVX2"
    assert params["recipe.model.compute.dtype"] == "float32"
    report = (mdir / "signoff.md").read_text()
    assert "- Compute: float32 on cpu (AVX2-only test CPU, AVX2" in report
    assert "bfloat16 is not native on this CPU" in report
    assert "float32" in Path(mdir / "signoff.html").read_text()
