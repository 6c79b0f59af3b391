"""Where results go: runs/ and the default MLflow store both resolve from the current directory."""

from __future__ import annotations

import shutil

import pytest
from fixtures_rundirs import MODEL, SCHEMES, migrated_sqlite_db, write_run_tree

from pipelines import tracking
from pipelines.rundir import PROJECT_ROOT, runs_root
from pipelines.tracking.store import artifact_location, display_uri, missing_local_store


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with no QEVAL_RUNS_DIR / MLFLOW_TRACKING_URI: the defaults apply."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("QEVAL_RUNS_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("QEVAL_EXPERIMENT", raising=False)
    return work


def test_defaults_resolve_from_the_working_directory(workdir):
    assert runs_root() == workdir / "runs"
    assert tracking.tracking_uri() == f"sqlite:///{workdir / 'mlflow.db'}"
    assert artifact_location(tracking.tracking_uri()) == str(workdir / "mlartifacts")
    assert PROJECT_ROOT.resolve() != workdir.resolve()  # the old default (the project root) is not used


def test_environment_overrides_both(workdir, monkeypatch, tmp_path):
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(tmp_path / "elsewhere" / "runs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert runs_root() == tmp_path / "elsewhere" / "runs"
    assert tracking.tracking_uri() == "http://tracking.example:5000"
    # A relative SQLite URI is relative to the working directory, artifacts beside it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/team.db")
    assert artifact_location(tracking.tracking_uri()) == str(workdir / "stores" / "mlartifacts")


def test_a_sweep_tracked_with_the_defaults_lands_beside_its_runs(workdir, tmp_path):
    """runs/, mlflow.db and mlartifacts/ all end up in the directory the sweep ran in."""
    shutil.copyfile(migrated_sqlite_db(tmp_path), workdir / "mlflow.db")  # skip the schema migration
    project_db = PROJECT_ROOT / "mlflow.db"
    project_db_before = project_db.stat().st_mtime_ns if project_db.exists() else None
    write_run_tree(workdir / "runs")
    result = tracking.track_sweep(MODEL, list(SCHEMES))
    assert result["synced"] and result["tracking_uri"] == f"sqlite:///{workdir / 'mlflow.db'}"
    assert (workdir / "mlartifacts").is_dir()
    assert any((workdir / "mlartifacts").rglob("recipe.yaml"))
    rows, source = tracking.compare(MODEL)
    assert source.startswith("source: MLflow ") and len(rows) == len(SCHEMES)
    # The project root's store (the old default) is neither created nor written.
    assert (project_db.stat().st_mtime_ns if project_db.exists() else None) == project_db_before


def test_store_helpers(tmp_path):
    assert missing_local_store(f"sqlite:///{tmp_path / 'x.db'}") == tmp_path / "x.db"
    (tmp_path / "x.db").write_bytes(b"")
    assert missing_local_store(f"sqlite:///{tmp_path / 'x.db'}") is None
    assert missing_local_store("http://host:5000") is None
    assert missing_local_store(str(tmp_path / "mlruns")) == tmp_path / "mlruns"
    assert display_uri("https://alice:s3cret@host:5000/x") == "https://alice:***@host:5000/x"
    assert display_uri("http://host:5000") == "http://host:5000"


def test_only_the_tracking_package_imports_mlflow():
    """MLflow stays behind pipelines.tracking: everything else reads and writes the run directories."""
    import ast

    offenders = []
    for root in ("pipelines", "evals"):
        for path in sorted((PROJECT_ROOT / root).rglob("*.py")):
            if path.is_relative_to(PROJECT_ROOT / "pipelines" / "tracking"):
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert not offenders, offenders
