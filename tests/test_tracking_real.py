"""Metrics, compare and tracking on run directories written by the real stages (tiny Llama, baseline).

The other tracking tests use hand-picked numbers; this one checks that what the
stages really write is what metrics, params and compare read, through the same
result classes, with a benchmark of two prompt lengths.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from fixtures_rundirs import migrated_sqlite_db, sqlite_store

from pipelines import tracking
from pipelines.execution.local import WORKER_OK, run_stages_in_process
from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.recipes import resolve as recipe_resolve
from pipelines.rundir import scheme_dir
from pipelines.signoff.metrics import scheme_metrics
from pipelines.tracking.params import scheme_files, scheme_params

pytestmark = pytest.mark.slow  # a real baseline sweep of the tiny model: about 40 s on 2 cores

MODEL = "tiny-real"
PROMPT_LENS = (16, 24)
SCHEMES = ("baseline", "int8")


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory, tiny_llama_dir) -> Path:
    root = tmp_path_factory.mktemp("tracking_real")
    shutil.copytree(recipe_resolve.RECIPES_DIR, root / "recipes")
    recipe = {"name": MODEL, "source": str(tiny_llama_dir), "dtype": "float32", "target_device": "cpu",
              "default_suite": "smoke", "description": "tiny random Llama for tests"}
    (root / "recipes" / "models" / f"{MODEL}.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recipe_resolve, "RECIPES_DIR", root / "recipes")
        mp.setenv("QEVAL_RUNS_DIR", str(root / "runs"))
        opts = SweepOptions(model=MODEL, schemes=list(SCHEMES), suite="smoke", limit=4, quiet=True, track=False,
                            overrides={"benchmark": {"batch_sizes": [1], "prompt_lens": list(PROMPT_LENS),
                                                     "gen_lens": [4], "iters": 1, "warmup": 0}})
        p = plan(opts)
        write_plan(p, opts)
        for scheme in SCHEMES:
            assert run_stages_in_process(MODEL, scheme, ("quantize", "evaluate", "benchmark"), quiet=True) == WORKER_OK
    return root


@pytest.fixture
def real_runs(real_tree, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe_resolve, "RECIPES_DIR", real_tree / "recipes")
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(real_tree / "runs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(migrated_sqlite_db(tmp_path), tmp_path))
    monkeypatch.delenv("QEVAL_EXPERIMENT", raising=False)
    return real_tree / "runs"


def test_real_result_files_give_every_metric_family_and_both_shapes(real_runs):
    metrics = scheme_metrics(scheme_dir(MODEL, "baseline"))
    for family in ("ppl.", "acc.", "acc_mean", "mem.weights_gib", "quant.duration_s"):
        assert any(k.startswith(family) for k in metrics), family
    for prompt_len in PROMPT_LENS:
        assert metrics[f"speed.decode_tok_s.bs1.p{prompt_len}.g4"] > 0
        assert metrics[f"speed.ttft_ms.p99.bs1.p{prompt_len}.g4"] > 0
    params = scheme_params(scheme_dir(MODEL, "baseline"), scheme_files(scheme_dir(MODEL, "baseline")))
    assert params["bench.device_kind"] == "cpu" and params["quant.device"] == "cpu"
    assert params["bench.settings.prompt_lens"] == "[16,24]"


def test_real_sweep_compares_the_same_from_mlflow_and_from_the_runs(real_runs):
    assert tracking.track_sweep(MODEL, list(SCHEMES))["synced"]
    from_mlflow, source = tracking.compare(MODEL)
    assert source.startswith("source: MLflow")
    from_runs, _ = tracking.compare(MODEL, from_runs=True)
    strip = [{k: v for k, v in row.items() if k != "run_id"} for row in from_mlflow]
    assert tracking.format_table(from_runs) == tracking.format_table(strip)


def test_signoff_tracks_into_the_sweeps_experiment_and_a_subset_never_replaces_the_sweeps_verdict(
        real_runs, capsys, monkeypatch):
    """`qeval signoff` once rebuilt the sweep in the default experiment, `--scheme` overwrote the
    sweep's signoff.json and MLflow tag with the subset's verdict, and `--no-track` was missing."""
    import json

    from mlflow import MlflowClient

    from pipelines import cli
    from pipelines.rundir import model_dir
    from pipelines.tracking.sweep import PARENT_TAG

    mdir = model_dir(MODEL)
    assert tracking.track_sweep(MODEL, list(SCHEMES), experiment="my-experiment")["synced"]
    cli.main(["signoff", "--model", MODEL])
    client = MlflowClient(tracking_uri=tracking.tracking_uri())  # this test's store, not a global one
    assert client.get_experiment_by_name(tracking.experiment_name(MODEL)) is None  # not the default one
    mine = client.get_experiment_by_name("my-experiment")
    runs = client.search_runs([mine.experiment_id])
    assert len(runs) == 1 + len(SCHEMES)  # the same runs, updated
    sweep_file = (mdir / "signoff.json").read_bytes()
    parent = next(r for r in runs if PARENT_TAG not in r.data.tags)

    cli.main(["signoff", "--model", MODEL, "--scheme", "int8"])
    assert "not tracked: a sign-off of some schemes only" in capsys.readouterr().out
    assert (mdir / "signoff.json").read_bytes() == sweep_file
    subset = json.loads((mdir / "signoff-only-int8.json").read_text())
    assert subset["subset_of"] == ["int8"] and "int8" in subset["verdicts"]
    assert (mdir / "signoff-only-int8.html").is_file()
    assert client.get_run(parent.info.run_id).data.tags == parent.data.tags

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: any use would warn
    cli.main(["signoff", "--model", MODEL, "--no-track"])
    assert "not reachable" not in capsys.readouterr().out
    assert json.loads((mdir / "sweep.json").read_text())["mlflow"]["synced"] is True
