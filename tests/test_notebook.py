"""notebooks/compare_schemes.ipynb runs headless against a store holding a logged sweep."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fixtures_rundirs import MODEL, SCHEMES, migrated_sqlite_db, sqlite_store, write_run_tree

from pipelines import tracking

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "compare_schemes.ipynb"


@pytest.fixture
def logged_sweep(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(runs))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store(migrated_sqlite_db(tmp_path), tmp_path))
    monkeypatch.setenv("QEVAL_MODEL", MODEL)
    monkeypatch.delenv("QEVAL_EXPERIMENT", raising=False)
    monkeypatch.delenv("QEVAL_SWEEP_ID", raising=False)
    write_run_tree(runs)
    assert tracking.track_sweep(MODEL, list(SCHEMES))["synced"]


@pytest.mark.slow  # starts a Jupyter kernel and MLflow in it
def test_compare_notebook_executes(logged_sweep, tmp_path, monkeypatch):
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # A "python3" spec on JUPYTER_PATH (searched first) makes the kernel run this interpreter,
    # the project's .venv, whatever specs the machine has. The kernel inherits the environment
    # set above (store URI, runs dir, model).
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "qeval .venv", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    km = KernelManager(kernel_name="python3")
    assert km.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(nb, km=km, timeout=180, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
                     + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "| gptq-w4g128 |" in text and "delta.ppl.wikitext2" in text
    assert "speed.decode_tok_s.bs1.p128.g32" in text  # the summary's speed column carries its shape
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3
