"""MLflow tracking against a real SQLite store: runs, params, metrics, inputs, reruns, secrets."""

from __future__ import annotations

import json
import logging
import math

import pytest
from fixtures_rundirs import (
    MODEL,
    SCHEMES,
    SWEEP_ID,
    migrated_sqlite_db,
    sqlite_store,
    write_run_tree,
)

from pipelines import tracking
from pipelines.rundir import Manifest, model_dir, read_json, scheme_dir, write_json_atomic
from pipelines.signoff.metrics import relative_metrics, scheme_metrics
from pipelines.signoff.plots import pareto_frontier, write_sweep_plots

HUB_TOKEN = "hf_recipe_secret_0123456789"
ENV_TOKEN = "hf_env_secret_abcdefghij"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    return migrated_sqlite_db(tmp_path_factory.mktemp("mlflow_template"))


@pytest.fixture
def store(tmp_path, monkeypatch, template_db):
    """A run tree under tmp_path, a fresh SQLite store, HF_TOKEN set and a token in the recipe."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(runs))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(template_db, tmp_path))
    monkeypatch.delenv("QEVAL_EXPERIMENT", raising=False)
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    # A credential-named recipe field and an innocent-looking one that holds the env secret.
    write_run_tree(runs, recipe_extra={"model": {"hub_token": HUB_TOKEN, "revision": ENV_TOKEN}})
    return runs


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking.tracking_uri())


def _runs(experiment="qeval/" + MODEL):
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _artifacts(client, run_id, path=None):
    out = []
    for info in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return sorted(out)


def test_track_sweep_logs_parent_and_nested_children(store, tmp_path):
    result = tracking.track_sweep(MODEL, list(SCHEMES))
    assert result["synced"] is True
    assert set(result["child_run_ids"]) == set(SCHEMES)
    client = _client()
    runs = _runs()
    assert len(runs) == 1 + len(SCHEMES)
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["qeval.kind"] == "sweep"
    assert parent.data.tags["sweep_id"] == SWEEP_ID and parent.data.tags["model"] == MODEL
    assert parent.data.tags["signoff"] == "FAIL"
    assert json.loads(parent.data.params["sweep.schemes"]) == list(SCHEMES)
    parent_artifacts = _artifacts(client, parent.info.run_id)
    for expected in ("plots/ppl_vs_weights.png", "plots/acc_vs_decode.png", "plots/recovery.png",
                     "signoff/signoff.json", "signoff/signoff.md", "sweep.json", "compare.md", "compare.csv"):
        assert expected in parent_artifacts

    baseline = scheme_metrics(scheme_dir(MODEL, "baseline"))
    for scheme, run_id in result["child_run_ids"].items():
        run = client.get_run(run_id)
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert (tags["model"], tags["scheme"], tags["sweep_id"]) == (MODEL, scheme, SWEEP_ID)
        assert tags["device"] == "cpu" and tags["variant"] and tags["backend"]
        assert tags.get("signoff") == {"baseline": "BASELINE", "gptq-w4g128": "FAIL", "int8": "PASS"}[scheme]
        expected = scheme_metrics(scheme_dir(MODEL, scheme))
        expected.update(relative_metrics(expected, baseline))
        assert set(metrics) == set(expected)
        assert all(math.isclose(metrics[k], v) for k, v in expected.items())
        assert params["recipe.scheme.name"] == scheme
        assert params["recipe.suite.perplexity.seq_len"] == "256"
        assert params["eval.ppl.wikitext2.protocol"] == "gptq"
        assert params["eval.ppl.c4.source.sha256"]
        assert params["eval.tasks.hellaswag.limit"] == "20"
        assert params["eval.tasks.dtype"] == "float32" and params["bench.device_kind"] == "cpu"
        assert json.loads(params["bench.what_ran.matmul_ops"]) == ["aten::mm"]
        assert params["git_commit"] and params["lib.mlflow"] and params["hw.cpu_model"]
        assert "hw.gpu_count" in params
        contexts = {(i.dataset.name, t.value) for i in run.inputs.dataset_inputs for t in i.tags}
        assert {("wikitext2", "evaluation"), ("c4", "evaluation"), ("hellaswag", "evaluation")} <= contexts
        if scheme == "gptq-w4g128":
            assert ("c4", "calibration") in contexts
            assert params["calibration.n_samples"] == "16"
            assert params["calibration.source.documents"] == "[1000, 2000)"
        artifacts = _artifacts(client, run_id)
        for expected_path in ("recipe.yaml", "quantize/quantize.json", "quantize/layer_errors.csv",
                              "eval/perplexity.json", "eval/tasks.json", "eval/samples/hellaswag.jsonl",
                              "bench/speed.json", "bench/memory.json"):
            assert expected_path in artifacts
        assert not any(p.startswith("quantize/model") for p in artifacts)  # checkpoint only on request
        manifest = read_json(scheme_dir(MODEL, scheme).manifest_path)
        assert manifest["mlflow"] == {"run_id": run_id, "synced": True}
        assert manifest["stages"]["quantize"]["status"] == "done"  # the rest of the manifest is kept

    sweep = read_json(model_dir(MODEL) / "sweep.json")
    assert sweep["mlflow"]["parent_run_id"] == parent.info.run_id
    assert sweep["mlflow"]["synced"] is True and sweep["mlflow"]["experiment"] == f"qeval/{MODEL}"
    # Artifacts of a SQLite store live beside the database, not in the working directory.
    assert (tmp_path / "mlartifacts").is_dir()


def test_rerun_updates_the_same_runs_without_duplicates(store, caplog):
    first = tracking.track_sweep(MODEL, list(SCHEMES))
    gptq = scheme_dir(MODEL, "gptq-w4g128")
    ppl = read_json(gptq.eval_dir / "perplexity.json")
    ppl["wikitext2"]["ppl"] = 22.5
    write_json_atomic(gptq.eval_dir / "perplexity.json", ppl)
    recipe = gptq.recipe_path.read_text().replace("group_size: 128", "group_size: 64")
    gptq.recipe_path.write_text(recipe)

    with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
        second = tracking.track_sweep(MODEL, list(SCHEMES))
    assert second["parent_run_id"] == first["parent_run_id"]
    assert second["child_run_ids"] == first["child_run_ids"]
    assert len(_runs()) == 1 + len(SCHEMES)
    client = _client()
    run_id = first["child_run_ids"]["gptq-w4g128"]
    run = client.get_run(run_id)
    assert run.data.metrics["ppl.wikitext2"] == 22.5
    assert run.data.metrics["delta.ppl.wikitext2"] == pytest.approx(2.5)
    assert [m.value for m in client.get_metric_history(run_id, "ppl.wikitext2")] == [21.0, 22.5]
    # Unchanged metrics gain no history point on a rerun.
    assert len(client.get_metric_history(run_id, "ppl.c4")) == 1
    # Params are immutable: the changed one keeps its first value and a warning says so.
    assert run.data.params["recipe.scheme.group_size"] == "128"
    assert "recipe.scheme.group_size" in caplog.text
    inputs = [(i.dataset.name, i.dataset.digest) for i in run.inputs.dataset_inputs]
    assert len(inputs) == len(set(inputs))


def test_a_run_missing_from_the_store_is_recreated(store):
    first = tracking.track_sweep(MODEL, list(SCHEMES))
    _client().delete_run(first["child_run_ids"]["int8"])
    second = tracking.track_sweep(MODEL, list(SCHEMES))
    assert second["child_run_ids"]["int8"] != first["child_run_ids"]["int8"]
    assert second["child_run_ids"]["baseline"] == first["child_run_ids"]["baseline"]
    assert Manifest(scheme_dir(MODEL, "int8")).data["mlflow"]["run_id"] == second["child_run_ids"]["int8"]
    assert len(_runs()) == 1 + len(SCHEMES)


def test_a_lost_run_id_is_found_again_by_its_tags(store):
    first = tracking.track_sweep(MODEL, list(SCHEMES))
    manifest = Manifest(scheme_dir(MODEL, "int8"))
    manifest.set("mlflow", {"run_id": None, "synced": False})  # as if the id never reached disk
    second = tracking.track_sweep(MODEL, list(SCHEMES))
    assert second["child_run_ids"] == first["child_run_ids"]
    assert len(_runs()) == 1 + len(SCHEMES)


def test_compare_reads_back_the_latest_sweep_with_deltas(store):
    tracking.track_sweep(MODEL, list(SCHEMES))
    rows, source = tracking.compare(MODEL)
    assert source.startswith("source: MLflow ") and SWEEP_ID in source
    assert [r["scheme"] for r in rows] == list(SCHEMES)
    by_scheme = {r["scheme"]: r for r in rows}
    assert by_scheme["gptq-w4g128"]["delta.ppl.wikitext2"] == pytest.approx(1.0)
    assert by_scheme["gptq-w4g128"]["recovery.acc.hellaswag"] == pytest.approx(0.95)
    assert by_scheme["baseline"]["delta.ppl.c4"] == 0.0
    assert by_scheme["int8"]["signoff"] == "PASS"

    # A second sweep of the same model: new parent, new children (the baseline is reused on
    # disk but gets its own run under the new parent); compare shows the latest by default.
    sweep_path = model_dir(MODEL) / "sweep.json"
    sweep = read_json(sweep_path)
    sweep["sweep_id"] = "sweep-0002"
    write_json_atomic(sweep_path, sweep)
    gptq = scheme_dir(MODEL, "gptq-w4g128")
    ppl = read_json(gptq.eval_dir / "perplexity.json")
    ppl["wikitext2"]["ppl"] = 25.0
    write_json_atomic(gptq.eval_dir / "perplexity.json", ppl)
    second = tracking.track_sweep(MODEL, list(SCHEMES))
    assert len(_runs()) == 2 * (1 + len(SCHEMES))
    assert _client().get_run(second["child_run_ids"]["baseline"]).data.tags["mlflow.parentRunId"] == second["parent_run_id"]
    latest = {r["scheme"]: r for r in tracking.compare(MODEL)[0]}
    assert latest["gptq-w4g128"]["delta.ppl.wikitext2"] == pytest.approx(5.0)
    assert latest["gptq-w4g128"]["sweep_id"] == "sweep-0002"
    old = {r["scheme"]: r for r in tracking.compare(MODEL, sweep_id=SWEEP_ID)[0]}
    assert old["gptq-w4g128"]["delta.ppl.wikitext2"] == pytest.approx(1.0)


def test_compare_names_the_fix_when_nothing_was_logged(store):
    from pipelines.errors import QevalError

    with pytest.raises(QevalError, match="qeval sync"):
        tracking.compare("never-tracked")


def test_format_table_markdown_csv_json(store):
    tracking.track_sweep(MODEL, list(SCHEMES))
    rows, _ = tracking.compare(MODEL)
    markdown = tracking.format_table(rows)
    header = markdown.splitlines()[0]
    assert header.startswith("| scheme |") and "delta.ppl.wikitext2" in header
    assert len(markdown.splitlines()) == 2 + len(rows)
    csv_text = tracking.format_table(rows, "csv")
    assert csv_text.splitlines()[0].startswith("scheme,")
    assert len(csv_text.strip().splitlines()) == 1 + len(rows)
    parsed = json.loads(tracking.format_table(rows, "json"))
    assert parsed[1]["scheme"] == "gptq-w4g128"
    narrow = tracking.format_table(rows, columns=["scheme", "ppl.", "delta.ppl."])
    assert narrow.splitlines()[0] == "| scheme | ppl.c4 | ppl.wikitext2 | delta.ppl.c4 | delta.ppl.wikitext2 |"
    with pytest.raises(ValueError, match="markdown, csv or json"):
        tracking.format_table(rows, "xml")


def test_secrets_never_reach_params_tags_or_artifacts(store, tmp_path):
    result = tracking.track_sweep(MODEL, list(SCHEMES))
    client = _client()
    for run in _runs():
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert HUB_TOKEN not in value and ENV_TOKEN not in value, key
            assert not tracking.looks_like_credential(key), key
        assert "recipe.model.hub_token" not in run.data.params
    run_id = result["child_run_ids"]["int8"]
    assert client.get_run(run_id).data.params["recipe.model.revision"] == tracking.REDACTED
    recipe = client.download_artifacts(run_id, "recipe.yaml", str(tmp_path))
    text = open(recipe).read()
    assert HUB_TOKEN not in text and ENV_TOKEN not in text and "hub_token" in text


@pytest.mark.parametrize(
    ("name", "secret"),
    [("HF_TOKEN", True), ("hub_token", True), ("model.access_token", True), ("apiKey", True),
     ("OPENAI_API_KEY", True), ("db.password", True), ("AWS_SECRET_ACCESS_KEY", True),
     ("auth", True), ("private_key_path", True), ("token_ids_sha256", False), ("n_tokens", False),
     ("tokenizer", False), ("max_new_tokens", False), ("author", False), ("TOKENIZERS_PARALLELISM", False)],
)
def test_looks_like_credential(name, secret):
    assert tracking.looks_like_credential(name) is secret


def test_checkpoint_is_logged_only_on_request(store):
    result = tracking.track_sweep(MODEL, list(SCHEMES), log_checkpoint=True)
    client = _client()
    assert "quantize/model/config.json" in _artifacts(client, result["child_run_ids"]["int8"])
    assert read_json(model_dir(MODEL) / "sweep.json")["mlflow"]["log_checkpoint"] is True


def test_experiment_from_env_and_argument(store, monkeypatch):
    monkeypatch.setenv("QEVAL_EXPERIMENT", "team/quant")
    assert tracking.experiment_name(MODEL) == "team/quant"
    assert tracking.experiment_name(MODEL, "explicit") == "explicit"
    result = tracking.track_sweep(MODEL, ["baseline", "int8"])
    assert result["experiment"] == "team/quant"
    assert len(_runs("team/quant")) == 3
    assert [r["scheme"] for r in tracking.compare(MODEL)[0]] == ["baseline", "int8"]


def test_sync_uploads_only_unsynced_sweeps(store):
    first = tracking.track_sweep(MODEL, list(SCHEMES))
    assert tracking.sync()[MODEL]["uploaded"] is False
    Manifest(scheme_dir(MODEL, "int8")).set("mlflow", {"run_id": first["child_run_ids"]["int8"], "synced": False})
    synced = tracking.sync(MODEL)[MODEL]
    assert synced["uploaded"] is True
    assert synced["child_run_ids"] == first["child_run_ids"]
    assert len(_runs()) == 1 + len(SCHEMES)


def test_write_sweep_plots(store):
    from pipelines.signoff.metrics import sweep_rows

    paths = write_sweep_plots(model_dir(MODEL) / "plots", sweep_rows(MODEL, SCHEMES))
    assert set(paths) == {"ppl_vs_weights", "acc_vs_decode", "recovery"}
    for path in paths.values():
        assert path.parent == model_dir(MODEL) / "plots"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_sweep_plots(model_dir(MODEL), [{"scheme": "x"}]) == {}


def test_pareto_frontier_on_hand_points():
    #          0: cheap+bad  1: dominated  2: middle  3: best-quality  4: no data  5: tie with 2
    points = [(0.5, 21.0), (1.5, 20.5), (1.0, 20.2), (2.0, 20.0), (float("nan"), 1.0), (1.0, 20.2)]
    assert pareto_frontier(points) == [0, 2, 5, 3]
    # Higher is better on both axes (accuracy vs tokens/s).
    speed_acc = [(50.0, 0.50), (80.0, 0.47), (30.0, 0.49), (80.0, 0.40)]
    assert pareto_frontier(speed_acc, minimize_x=False, minimize_y=False) == [0, 1]
    assert pareto_frontier([]) == []
