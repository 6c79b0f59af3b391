"""Tracking against a real `mlflow server` process, including an outage and a later `sync`."""

from __future__ import annotations

import logging
import time

import pytest
from fixtures_rundirs import MODEL, SCHEMES, write_run_tree
from helpers import MlflowServer

from pipelines import tracking
from pipelines.rundir import Manifest, model_dir, read_json, scheme_dir

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def runs_env(tmp_path, monkeypatch, server):
    runs = tmp_path / "runs"
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(runs))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.delenv("QEVAL_EXPERIMENT", raising=False)
    return runs


def _client(url):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url)


def _runs_of(url, model):
    client = _client(url)
    exp = client.get_experiment_by_name(f"qeval/{model}")
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def test_sweep_logged_to_a_real_server(server, runs_env):
    write_run_tree(runs_env)
    result = tracking.track_sweep(MODEL, list(SCHEMES))
    assert result["synced"] is True
    client = _client(server.url)
    runs = _runs_of(server.url, MODEL)
    assert len(runs) == 1 + len(SCHEMES)
    for scheme, run_id in result["child_run_ids"].items():
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
        assert run.data.tags["scheme"] == scheme
        assert "ppl.wikitext2" in run.data.metrics and "recipe.scheme.name" in run.data.params
        assert [f.path for f in client.list_artifacts(run_id, "bench")] == ["bench/memory.json", "bench/speed.json"]
    assert any(f.path == "plots" for f in client.list_artifacts(result["parent_run_id"]))
    rows, source = tracking.compare(MODEL)
    assert source.startswith(f"source: MLflow {server.url}")
    assert {r["scheme"] for r in rows} == set(SCHEMES)
    assert next(r for r in rows if r["scheme"] == "int8")["delta.ppl.wikitext2"] == pytest.approx(0.2)


def test_outage_then_sync_completes_runs_without_duplicates(server, runs_env, caplog):
    model = "outage-llama"
    write_run_tree(runs_env, model=model)
    # Before the outage: the parent and the baseline run exist.
    before = tracking.track_sweep(model, ["baseline"])
    assert before["synced"] is True

    server.stop()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
        during = tracking.track_sweep(model, list(SCHEMES))
    assert time.monotonic() - started < 60  # noticed in seconds, not the client's default minutes
    assert during["synced"] is False
    assert "qeval sync" in caplog.text
    assert read_json(model_dir(model) / "sweep.json")["mlflow"]["synced"] is False
    for scheme in SCHEMES:
        assert Manifest(scheme_dir(model, scheme)).data["mlflow"]["synced"] is False
    # The baseline keeps the run id created before the outage.
    assert Manifest(scheme_dir(model, "baseline")).data["mlflow"]["run_id"] == before["child_run_ids"]["baseline"]

    server.start()  # same store, same port
    synced = tracking.sync()[model]
    assert synced["synced"] is True and synced["uploaded"] is True
    assert synced["parent_run_id"] == before["parent_run_id"]
    assert synced["child_run_ids"]["baseline"] == before["child_run_ids"]["baseline"]

    runs = _runs_of(server.url, model)
    assert len(runs) == 1 + len(SCHEMES)  # exactly once each
    schemes = sorted(r.data.tags.get("scheme", "<parent>") for r in runs)
    assert schemes == sorted([*SCHEMES, "<parent>"])
    client = _client(server.url)
    for scheme in SCHEMES:
        run_id = synced["child_run_ids"][scheme]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == before["parent_run_id"]
        for key in ("ppl.wikitext2", "acc.hellaswag", "mem.weights_gib", "speed.decode_tok_s.bs1.p128.g32"):
            assert len(client.get_metric_history(run_id, key)) == 1, (scheme, key)
        assert Manifest(scheme_dir(model, scheme)).data["mlflow"] == {"run_id": run_id, "synced": True}
    assert read_json(model_dir(model) / "sweep.json")["mlflow"]["synced"] is True
    # A second sync finds nothing to do and creates nothing.
    assert tracking.sync(model)[model]["uploaded"] is False
    assert len(_runs_of(server.url, model)) == 1 + len(SCHEMES)
