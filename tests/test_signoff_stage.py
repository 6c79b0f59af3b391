"""The sign-off on run directories written by the real stages (tiny Llama, baseline + nf4).

One sweep is built per module; each test works on its own copy of the runs tree and
changes it the way a user or a failure would (a new recipe, a benchmark that fails),
then checks what the sign-off judges, what it refuses to judge, and what it writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from evals.results import MemoryResult, SpeedResult
from pipelines.errors import EXIT_INCOMPLETE
from pipelines.execution.local import WORKER_OK, run_stages_in_process, run_worker
from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.recipes import resolve as recipe_resolve
from pipelines.rundir import scheme_dir
from pipelines.signoff.evidence import read_evidence
from pipelines.stages import signoff as signoff_stage
from pipelines.stages.common import StageContext

MODEL = "tiny"
SCHEMES = ["baseline", "nf4"]
LIMIT = 10  # arc_easy examples per scheme: enough to pair, cheap on 2 cores


def _model_recipe(tiny_llama_dir: Path, target_device: str) -> dict:
    return {"name": MODEL, "source": str(tiny_llama_dir), "dtype": "float32", "target_device": target_device,
            "default_suite": "smoke", "description": "tiny random Llama for tests"}


def _options(**overrides) -> SweepOptions:
    return SweepOptions(model=MODEL, schemes=list(SCHEMES), suite="smoke", limit=LIMIT, quiet=True, track=False,
                        overrides=overrides)


def _use(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.setattr(recipe_resolve, "RECIPES_DIR", root / "recipes")
    mp.setenv("QEVAL_RUNS_DIR", str(root / "runs"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_llama_dir) -> Path:
    """recipes/ (with a tiny model recipe whose target is this CPU) and runs/ of a finished sweep."""
    root = tmp_path_factory.mktemp("signoff_sweep")
    shutil.copytree(recipe_resolve.RECIPES_DIR, root / "recipes")
    (root / "recipes" / "models" / f"{MODEL}.yaml").write_text(yaml.safe_dump(_model_recipe(tiny_llama_dir, "cpu")))
    with pytest.MonkeyPatch.context() as mp:
        _use(mp, root)
        opts = _options()
        p = plan(opts)
        write_plan(p, opts)
        for scheme in SCHEMES:
            assert run_stages_in_process(MODEL, scheme, ("quantize", "evaluate", "benchmark"), quiet=True) == WORKER_OK
    return root


@pytest.fixture
def tree(built, tmp_path, monkeypatch) -> Path:
    """This test's own copy of the built recipes and runs."""
    for part in ("recipes", "runs"):
        shutil.copytree(built / part, tmp_path / part)
    _use(monkeypatch, tmp_path)
    return tmp_path


def _gates(result: dict, scheme: str) -> dict[str, dict]:
    entry = next(s for s in result["schemes"] if s["scheme"] == scheme)
    return {g["gate"]: g for g in entry["gates"]}


def _report(tree: Path) -> tuple[dict, str, str]:
    mdir = tree / "runs" / MODEL
    return (json.loads((mdir / "signoff.json").read_text()), (mdir / "signoff.md").read_text(),
            (mdir / "signoff.html").read_text())


# --- item 1: cost gates are decided where the benchmark ran on the target device --------------


def test_speed_json_records_the_device_kind_apart_from_its_name(tree):
    speed = SpeedResult.read(scheme_dir(MODEL, "nf4").bench_dir / SpeedResult.FILE)
    assert speed.device_kind == "cpu"
    assert speed.device_name and speed.device_name != "cpu"  # the human name, not the kind


def test_cost_gates_of_a_cpu_target_are_decided_with_figure_and_threshold(tree):
    result = signoff_stage.run(MODEL, SCHEMES)
    assert result["verdicts"]["nf4"] in ("PASS", "FAIL", "INCONCLUSIVE")
    gates = _gates(result, "nf4")
    base_mem = MemoryResult.read(scheme_dir(MODEL, "baseline").bench_dir / MemoryResult.FILE)
    nf4_mem = MemoryResult.read(scheme_dir(MODEL, "nf4").bench_dir / MemoryResult.FILE)
    weights = gates["max_weights_rel"]
    assert weights["verdict"] in ("PASS", "FAIL"), weights["note"]
    assert weights["estimate"] == pytest.approx(nf4_mem.weights_bytes / base_mem.weights_bytes)
    assert weights["threshold"] == 0.6
    assert (weights["verdict"] == "PASS") == (weights["estimate"] <= 0.6)

    def decode_bs1(scheme: str) -> float:
        speed = SpeedResult.read(scheme_dir(MODEL, scheme).bench_dir / SpeedResult.FILE)
        rows = [r for r in speed.results if r["batch_size"] == 1 and r["status"] == "ok"]
        return min(rows, key=lambda r: (r["prompt_len"], r["gen_len"]))["decode_tok_s"]["median"]

    decode = gates["min_decode_rel[bs1]"]
    assert decode["verdict"] in ("PASS", "FAIL"), decode["note"]
    assert decode["value"] == pytest.approx(decode_bs1("nf4"))
    assert decode["baseline"] == pytest.approx(decode_bs1("baseline"))
    assert decode["estimate"] == pytest.approx(decode_bs1("nf4") / decode_bs1("baseline"))
    assert (decode["verdict"] == "PASS") == (decode["estimate"] >= 1.0)

    _, md, html = _report(tree)
    for text in (md, html):
        assert "max_weights_rel" in text and "min_decode_rel[bs1]" in text
        assert "needs ≤ 0.6x" in text and "needs ≥ 1x" in text  # the threshold, beside the figure
        assert f"{weights['estimate']:.3g}x the baseline" in text


def test_cost_gates_measured_off_the_target_device_are_skipped_with_the_reason(tree, tiny_llama_dir):
    # The same model served on a GPU: its CPU numbers say nothing about its cost there.
    (tree / "recipes" / "models" / f"{MODEL}.yaml").write_text(yaml.safe_dump(_model_recipe(tiny_llama_dir, "cuda")))
    opts = _options()
    write_plan(plan(opts), opts)  # new recipes; no stage key depends on the target device
    result = signoff_stage.run(MODEL, SCHEMES)
    assert result["not_judged"] == {}
    gates = _gates(result, "nf4")
    for name in ("max_weights_rel", "min_decode_rel[bs1]"):
        assert gates[name]["verdict"] == "SKIPPED"
        assert "measured on cpu" in gates[name]["note"] and "target device is cuda" in gates[name]["note"]


def test_cost_gates_of_a_checkpoint_that_ran_decompressed_stay_skipped_with_the_reason(tree):
    # fp8-dynamic's compressed-tensors checkpoint decompresses to dense linear layers on a CPU.
    schemes = [*SCHEMES, "fp8-dynamic"]
    opts = SweepOptions(model=MODEL, schemes=schemes, suite="smoke", limit=LIMIT, quiet=True, track=False)
    write_plan(plan(opts), opts)
    assert run_stages_in_process(MODEL, "fp8-dynamic", ("quantize", "evaluate", "benchmark"), quiet=True) == WORKER_OK
    speed = SpeedResult.read(scheme_dir(MODEL, "fp8-dynamic").bench_dir / SpeedResult.FILE)
    assert not speed.representative and speed.representative_reason
    result = signoff_stage.run(MODEL, schemes)
    gates = _gates(result, "fp8-dynamic")
    for name in ("max_weights_rel", "min_decode_rel[bs1]"):
        assert gates[name]["verdict"] == "SKIPPED"
        assert gates[name]["note"].startswith(f"not representative: {speed.representative_reason}")
    assert _gates(result, "nf4")["max_weights_rel"]["verdict"] in ("PASS", "FAIL")  # nf4 is still decided
    assert any("fp8-dynamic: cost numbers are not representative" in c for c in result["caveats"])


def test_evidence_is_read_through_the_result_classes(tree):
    ctx = StageContext.from_run_dir(MODEL, "nf4")
    ev = read_evidence(ctx.sdir, "nf4", ctx.recipe)
    smoke = ctx.recipe
    assert set(ev.perplexity) == set(smoke.perplexity.datasets)
    wiki = ev.perplexity["wikitext2"]
    assert len(wiki.window_nll) == smoke.perplexity.max_windows and wiki.n_windows_available is None
    assert [len(rows) for rows in ev.task_samples.values()] == [LIMIT] * len(smoke.tasks.names)
    assert ev.task_sizes["arc_easy"] > LIMIT  # the whole ARC-Easy test set, from its provenance
    assert set(ev.decode_tok_s) == set(smoke.benchmark.batch_sizes)
    assert ev.cost_representative and ev.cost_note is None
    assert ev.weights_gib == pytest.approx(
        MemoryResult.read(ctx.sdir.bench_dir / MemoryResult.FILE).weights_bytes / 2**30)


# --- item 2: only schemes whose every stage is done under its current key are judged --------


def _poison(scheme: str) -> None:
    """Make the scheme's old result files unreadable: judging them would raise."""
    sdir = scheme_dir(MODEL, scheme)
    for path in (sdir.eval_dir / "perplexity.json", sdir.eval_dir / "tasks.json",
                 sdir.bench_dir / "speed.json", sdir.bench_dir / "memory.json"):
        path.write_text("{not json")


def _assert_not_judged(tree: Path, result: dict, scheme: str, reason: str) -> None:
    assert result["verdicts"][scheme] == "NOT JUDGED"
    assert reason in result["not_judged"][scheme]
    assert (result["overall"], result["exit_code"]) == ("INCOMPLETE", EXIT_INCOMPLETE)
    assert _gates(result, scheme) == {}
    saved, md, html = _report(tree)
    assert saved["not_judged"] == result["not_judged"] and saved["exit_code"] == EXIT_INCOMPLETE
    assert "## Not judged" in md and reason in md
    assert 'id="not-judged"' in html and reason in html
    assert "**Overall: INCOMPLETE** (exit code 4)" in md


def test_a_fresh_sweep_judges_every_scheme(tree):
    result = signoff_stage.run(MODEL, SCHEMES)
    assert result["not_judged"] == {}
    assert result["verdicts"]["nf4"] != "NOT JUDGED" and result["exit_code"] != EXIT_INCOMPLETE


def test_a_changed_recipe_makes_the_old_results_stale_and_not_judged(tree):
    # The user asks for more windows; the plan rewrites the recipes, the stages have not rerun yet.
    opts = _options(perplexity={"max_windows": 6})
    write_plan(plan(opts), opts)
    _poison("nf4")
    result = signoff_stage.run(MODEL, SCHEMES)
    assert result["verdicts"]["baseline"] == "NOT JUDGED"
    assert "evaluate: stale (recipe or code changed since it ran)" in result["not_judged"]["baseline"]
    _assert_not_judged(tree, result, "nf4", "evaluate: stale (recipe or code changed since it ran)")


def test_a_failed_benchmark_is_not_judged_on_its_old_files(tree, monkeypatch):
    import evals.speed

    def broken(*args, **kwargs):
        raise RuntimeError("the benchmark kernel crashed")

    monkeypatch.setattr(evals.speed, "measure_speed", broken)  # a library failure during the rerun
    assert run_stages_in_process(MODEL, "nf4", ("benchmark",), force=True, quiet=True) != WORKER_OK
    old_speed = scheme_dir(MODEL, "nf4").bench_dir / SpeedResult.FILE
    assert SpeedResult.read(old_speed).device_kind == "cpu"  # the old file is still there...
    _poison("nf4")  # ...and must not be read
    result = signoff_stage.run(MODEL, SCHEMES)
    assert result["verdicts"]["baseline"] == "BASELINE"
    _assert_not_judged(tree, result, "nf4", "benchmark: failed: RuntimeError: the benchmark kernel crashed")


def test_a_requested_scheme_that_never_ran_is_not_judged(tree):
    result = signoff_stage.run(MODEL, [*SCHEMES, "gptq"])
    assert result["verdicts"]["nf4"] != "NOT JUDGED"
    _assert_not_judged(tree, result, "gptq", "not run")


def test_a_skipped_quantize_is_not_judged(tree, monkeypatch):
    import sys

    # A bitsandbytes whose native library does not load: the next sweep's plan skips nf4.
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    opts = _options()
    p = plan(opts)
    assert "nf4" in p.skipped
    write_plan(p, opts)
    _poison("nf4")
    result = signoff_stage.run(MODEL, SCHEMES)
    _assert_not_judged(tree, result, "nf4", "quantize: skipped: bitsandbytes cannot load here")
    assert "Traceback" not in result["not_judged"]["nf4"]  # the first line; the manifest keeps the rest


def test_a_failed_baseline_leaves_every_scheme_not_judged(tree, monkeypatch):
    import evals.speed

    def broken(*args, **kwargs):
        raise RuntimeError("the benchmark kernel crashed")

    monkeypatch.setattr(evals.speed, "measure_speed", broken)
    assert run_stages_in_process(MODEL, "baseline", ("benchmark",), force=True, quiet=True) != WORKER_OK
    _poison("baseline")
    result = signoff_stage.run(MODEL, SCHEMES)
    assert result["verdicts"]["baseline"] == "NOT JUDGED"
    assert "benchmark: failed: RuntimeError" in result["not_judged"]["baseline"]
    _assert_not_judged(tree, result, "nf4", "the baseline is NOT JUDGED (benchmark: failed")


# --- the serve stage: a real server per scheme, capacity/cost gates and the ship frontier ------


@pytest.mark.slow
def test_served_schemes_get_serving_gates_and_a_ship_frontier(tree, monkeypatch):
    monkeypatch.setenv("QEVAL_RECIPES_DIR", str(tree / "recipes"))  # for the worker processes
    for scheme in SCHEMES:
        path = scheme_dir(MODEL, scheme).recipe_path
        recipe = yaml.safe_load(path.read_text())
        recipe["hardware"].update(name="test box", price_per_hour=0.1, memory_gib=2)
        recipe["model"]["gates"] = {"min_capacity_rel": 0.5, "max_usd_per_m_rel": 100.0}
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        # In a worker process, as a sweep runs it: GuideLLM's own worker processes are started from
        # a clean interpreter, not from this test session's (whose stdio other tests have swapped).
        assert run_worker(MODEL, scheme, ("serve",), force=False, quiet=True, profile=False) == WORKER_OK
        served = json.loads((scheme_dir(MODEL, scheme).serve_dir / "serve.json").read_text())
        assert served["engine"] == "transformers" and served["levels"][0]["requests_ok"] >= 1
    result = signoff_stage.run(MODEL, SCHEMES)
    gates = _gates(result, "nf4")
    assert gates["min_capacity_rel"]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert gates["max_usd_per_m_rel"]["metric"] == "serve.usd_per_m_output_tokens"
    frontier = result["ship_frontier"]
    assert [r["scheme"] for r in frontier["rows"]] == SCHEMES
    assert frontier["pick"].startswith(("Ship nf4", "No scheme passes every gate"))
    _, md, html = _report(tree)
    assert "## Ship frontier" in md and frontier["pick"] in md
    assert 'id="ship-frontier"' in html
