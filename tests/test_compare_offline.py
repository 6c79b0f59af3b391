"""`qeval compare` without a server: the run directories give the same table, and say so."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest
from fixtures_rundirs import (
    MODEL,
    SCHEMES,
    SWEEP_ID,
    migrated_sqlite_db,
    sqlite_store,
    write_run_tree,
)

from evals.results import SpeedResult
from pipelines import cli, tracking
from pipelines.errors import QevalError
from pipelines.rundir import scheme_dir


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    return migrated_sqlite_db(tmp_path_factory.mktemp("mlflow_template"))


@pytest.fixture
def runs(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(runs))
    monkeypatch.delenv("QEVAL_EXPERIMENT", raising=False)
    write_run_tree(runs)
    return runs


@pytest.fixture
def store(runs, tmp_path, monkeypatch, template_db):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(template_db, tmp_path))
    return runs


def _table(rows):
    """The compare table without the MLflow run ids (the only column the run directories lack)."""
    return tracking.format_table([{k: v for k, v in row.items() if k != "run_id"} for row in rows])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_directories_give_the_same_table_as_mlflow(store):
    tracking.track_sweep(MODEL, list(SCHEMES))
    from_mlflow, mlflow_source = tracking.compare(MODEL)
    from_runs, runs_source = tracking.compare(MODEL, from_runs=True)
    assert mlflow_source.startswith("source: MLflow sqlite:///")
    assert runs_source.startswith("source: run directories ") and "--from-runs" in runs_source
    assert SWEEP_ID in mlflow_source and SWEEP_ID in runs_source
    assert all(row["run_id"] for row in from_mlflow)
    assert _table(from_runs) == _table(from_mlflow)
    # Tags and deltas are there, not only raw metrics.
    int8 = next(r for r in from_runs if r["scheme"] == "int8")
    assert (int8["signoff"], int8["device"], int8["backend"]) == ("PASS", "cpu", "bnb-cpu")
    assert int8["delta.ppl.wikitext2"] == pytest.approx(0.2)


def test_unreachable_server_falls_back_to_the_run_directories(runs, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    started = time.monotonic()
    rows, source = tracking.compare(MODEL)
    assert time.monotonic() - started < 60  # the client's default retries take minutes
    assert "unreachable" in source and url in source and source.startswith("source: run directories")
    assert [r["scheme"] for r in rows] == list(SCHEMES)
    assert _table(rows) == _table(tracking.compare(MODEL, from_runs=True)[0])


def test_a_missing_sqlite_store_is_read_around_not_created(runs, tmp_path, monkeypatch):
    db = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    rows, source = tracking.compare(MODEL)
    assert f"no MLflow store at {db}" in source
    assert len(rows) == len(SCHEMES)
    assert not db.exists() and not db.parent.exists()


def test_a_store_without_the_sweep_falls_back(store):
    # As after `qeval run --no-track`: the store exists but holds nothing of this model.
    rows, source = tracking.compare(MODEL)
    assert "has no runs of 'tiny-llama'" in source and source.startswith("source: run directories")
    assert len(rows) == len(SCHEMES)


def test_run_directories_hold_only_the_latest_sweep(runs):
    with pytest.raises(QevalError, match="only in MLflow"):
        tracking.compare(MODEL, sweep_id="sweep-0000", from_runs=True)
    assert tracking.compare(MODEL, sweep_id=SWEEP_ID, from_runs=True)[0]


def test_nothing_anywhere_names_both_fixes(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    with pytest.raises(QevalError, match="QEVAL_RUNS_DIR") as raised:
        tracking.compare("never-run")
    assert "qeval sync" in str(raised.value) and "no MLflow store" in str(raised.value)


def test_cli_compare_prints_the_source_and_every_benchmarked_shape(runs, tmp_path, monkeypatch, capsys):
    """A suite with two prompt lengths shows both in the default columns, each named by its shape."""
    path = scheme_dir(MODEL, "int8").bench_dir / SpeedResult.FILE
    speed = SpeedResult.read(path)
    longer = [{**row, "prompt_len": 512} for row in speed.results if row["status"] == "ok"]
    dataclasses.replace(speed, results=[*speed.results, *longer]).write(path)
    # A local checkpoint folder named like the model resolves to it (no recipe, no Hub).
    checkpoint = tmp_path / MODEL
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    for name in ("TOKENIZERS_PARALLELISM", "GPTQMODEL_CPU_WORKERS"):  # main() sets them when unset
        monkeypatch.setenv(name, "1")

    assert cli.main(["compare", "--model", str(checkpoint), "--from-runs"]) == 0
    out = capsys.readouterr().out
    source, header = out.splitlines()[:2]
    assert source.startswith("source: run directories")
    columns = [c.strip() for c in header.strip("|").split("|")]
    for name in ("speed.decode_tok_s.bs1.p128.g32", "speed.decode_tok_s.bs1.p512.g32",
                 "speed.ttft_ms.p50.bs1.p128.g32", "speed.ttft_ms.p50.bs1.p512.g32"):
        assert name in columns
    assert not any(c.startswith("speed.decode_tok_s.bs4") for c in columns)  # the summary is batch size 1

    assert cli.main(["compare", "--model", str(checkpoint), "--from-runs", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("scheme,")  # csv stays machine-readable; the source goes to stderr
    assert captured.err.startswith("source: run directories")
