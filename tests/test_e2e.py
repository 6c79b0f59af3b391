"""End to end on the real default model: `qeval run --suite smoke` of every transformers scheme on the CPU.

One sweep of every CPU scheme variant is logged to a real `mlflow server`
process; the tests then check the run directories, fresh-process reloads,
MLflow, the sign-off report, caching on rerun, and a prequantized evaluation
of a checkpoint the sweep made.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, MlflowServer, run_qeval

from pipelines.quantizers import get_quantizer
from pipelines.recipes import available, load_scheme

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
# Every scheme a transformers engine runs; the GGUF (llama.cpp) schemes have their own sweep
# in tests/test_gguf_sweep.py, and run on the same code paths, chosen by Quantizer.engine.
SCHEMES = [s for s in available("schemes")
           if s != "prequantized" and get_quantizer(load_scheme(s).quantizer).engine == "transformers"]
COMPRESSED = {s for s in SCHEMES if s != "baseline"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    server = MlflowServer(root)
    server.start()
    env = {"QEVAL_RUNS_DIR": str(root / "runs"), "MLFLOW_TRACKING_URI": server.url}
    proc = run_qeval("run", "--model", MODEL, "--suite", "smoke", "--schemes", ",".join(SCHEMES), "--quiet", env=env)
    yield {"proc": proc, "runs": root / "runs" / MODEL, "env": env, "server": server}
    server.stop()


def manifest(sweep, scheme) -> dict:
    return json.loads((sweep["runs"] / scheme / "manifest.json").read_text())


def test_sweep_finishes_with_a_signoff_exit_code(sweep):
    proc = sweep["proc"]
    assert proc.returncode in (0, 1, 3), proc.stderr[-4000:]
    assert "sign-off:" in proc.stdout
    for scheme in SCHEMES:
        assert scheme in proc.stdout


@pytest.mark.parametrize("scheme", SCHEMES)
def test_serve_stage_measured_or_skipped_with_a_reason(sweep, scheme):
    entry = manifest(sweep, scheme)["stages"]["serve"]
    assert entry["status"] in ("done", "skipped"), entry.get("error")
    if entry["status"] == "skipped":
        assert entry.get("error")  # the reason the engine cannot serve it
        return
    served = json.loads((sweep["runs"] / scheme / "serve" / "serve.json").read_text())
    level = served["levels"][0]
    assert level["concurrency"] == 1 and level["requests_ok"] >= 1 and level["errors"] == 0
    assert 0 < level["ttft_ms"]["p50"] <= level["ttft_ms"]["p99"] < level["e2e_ms"]["p99"]
    assert served["capacity"]["slo"] == {"ttft_ms_p99": 5000, "itl_ms_p99": 1000}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_stage_wrote_its_outputs(sweep, scheme):
    m = manifest(sweep, scheme)
    for stage in ("quantize", "evaluate", "benchmark"):
        entry = m["stages"][stage]
        assert entry["status"] == "done", entry.get("error")
        assert entry["duration_s"] > 0
        for out in entry["outputs"]:
            assert (sweep["runs"] / scheme / out).exists()
        # the model under test is loaded at most once per stage
        assert entry.get("model_loads", {}).get(stage, 0) <= 1
    sdir = sweep["runs"] / scheme
    assert (sdir / "recipe.yaml").is_file()
    assert (sdir / "quantize" / "model" / "config.json").is_file()
    ppl = json.loads((sdir / "eval" / "perplexity.json").read_text())["wikitext2"]
    assert ppl["protocol"] == "gptq" and ppl["seq_len"] == 256 and ppl["n_windows"] == 8
    assert ppl["source"]["kind"] == "local" and len(ppl["source"]["sha256"]) == 64
    assert 1 < ppl["ppl"] < 1000 and len(ppl["window_nll"]) == 8
    tasks = json.loads((sdir / "eval" / "tasks.json").read_text())
    assert 0 <= tasks["results"]["arc_easy"]["acc"] <= 1
    samples = (sdir / "eval" / "samples" / "arc_easy.jsonl").read_text().splitlines()
    assert len(samples) == 20
    speed = json.loads((sdir / "bench" / "speed.json").read_text())
    assert {r["batch_size"] for r in speed["results"]} == {1, 4}
    memory = json.loads((sdir / "bench" / "memory.json").read_text())
    assert memory["weights_bytes"] > 0 and memory["disk_bytes"] > 0
    quant = json.loads((sdir / "quantize" / "quantize.json").read_text())
    if scheme in COMPRESSED:
        assert (sdir / "quantize" / "layer_errors.csv").is_file()
        assert quant["disk_bytes"] < quant["baseline_disk_bytes"]
        assert quant["worst_layers"]
    emulated = load_scheme(scheme).quantizer in ("int8-w8a8", "fp8-dynamic")
    assert quant["emulated"] is emulated
    assert speed["representative"] is (not emulated)


RELOAD_ALL = r"""
import json, sys, torch
from pipelines.quantizers import get_quantizer
out = {}
for path, key in json.loads(sys.argv[1]).items():
    model = get_quantizer(key).load(path, "cpu", "bfloat16")
    with torch.inference_mode():
        logits = model(torch.arange(1, 17).unsqueeze(0)).logits
    out[path] = bool(torch.isfinite(logits).all())
    del model
print(json.dumps(out))
"""


def test_checkpoints_reload_in_a_fresh_process(sweep):
    jobs = {}
    for scheme in SCHEMES:
        quant = json.loads((sweep["runs"] / scheme / "quantize" / "quantize.json").read_text())
        jobs[quant["checkpoint"]] = quant["quantizer"]
    proc = subprocess.run([sys.executable, "-c", RELOAD_ALL, json.dumps(jobs)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    finite = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(finite) == len(SCHEMES) and all(finite.values())


def test_mlflow_server_holds_one_parent_and_every_child(sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=sweep["server"].url)
    exp = client.get_experiment_by_name(f"qeval/{MODEL}")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("qeval.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("qeval.kind") == "scheme"]
    assert len(parents) == 1
    assert sorted(r.data.tags["scheme"] for r in children) == sorted(SCHEMES)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        for metric in ("ppl.wikitext2", "acc.arc_easy", "mem.weights_gib"):
            assert metric in child.data.metrics, (child.data.tags["scheme"], metric)
        # Speed metrics carry their shape (bs1.p<prompt>.g<gen>).
        assert any(m.startswith("speed.decode_tok_s.bs1.p") for m in child.data.metrics), child.data.tags["scheme"]
        if child.data.tags["scheme"] != "baseline":
            assert "delta.ppl.wikitext2" in child.data.metrics
        assert child.data.tags.get("signoff")


def test_signoff_report_renders_in_chromium(sweep, tmp_path):
    report = json.loads((sweep["runs"] / "signoff.json").read_text())
    assert set(report["verdicts"]) == set(SCHEMES)
    assert report["exit_code"] == sweep["proc"].returncode
    html = sweep["runs"] / "signoff.html"
    assert (sweep["runs"] / "signoff.md").is_file() and html.is_file()
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    dom = subprocess.run(
        [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    assert f"qeval sign-off — {MODEL}" in dom
    for scheme in SCHEMES:
        assert f">{scheme}<" in dom


def test_signoff_command_reruns_with_the_same_exit_code(sweep):
    proc = run_qeval("signoff", "--model", MODEL, env=sweep["env"])
    assert proc.returncode == sweep["proc"].returncode, proc.stderr[-3000:]
    assert "sign-off:" in proc.stdout


def test_compare_reads_the_table_back_from_mlflow(sweep):
    proc = run_qeval("compare", "--model", MODEL, "--format", "csv", env=sweep["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("scheme,") and "ppl.wikitext2" in lines[0] and "delta.ppl.wikitext2" in lines[0]
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(SCHEMES)


def test_rerun_is_cached_and_does_not_duplicate_runs(sweep):
    proc = run_qeval("run", "--model", MODEL, "--suite", "smoke", "--schemes", ",".join(SCHEMES), "--quiet", env=sweep["env"])
    assert proc.returncode == sweep["proc"].returncode, proc.stderr[-3000:]
    for scheme in SCHEMES:
        m = manifest(sweep, scheme)
        assert all(m["stages"][s]["status"] == "done" for s in ("quantize", "evaluate", "benchmark"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=sweep["server"].url)
    exp = client.get_experiment_by_name(f"qeval/{MODEL}")
    assert len(client.search_runs([exp.experiment_id])) == len(SCHEMES) + 1


def test_a_checkpoint_made_here_evaluates_as_prequantized(sweep):
    gptq = sweep["runs"] / "gptq" / "quantize" / "model"
    env = {**sweep["env"], "MLFLOW_TRACKING_URI": f"sqlite:///{sweep['runs'].parent.parent / 'pre.db'}"}
    proc = run_qeval("run", "--model", MODEL, "--suite", "smoke", "--schemes", "prequantized",
                     "--prequantized", str(gptq), "--quiet", env=env)
    assert proc.returncode in (0, 1, 3), proc.stderr[-3000:]
    pre = json.loads((sweep["runs"] / "prequantized" / "eval" / "perplexity.json").read_text())["wikitext2"]
    made = json.loads((sweep["runs"] / "gptq" / "eval" / "perplexity.json").read_text())["wikitext2"]
    assert pre["ppl"] == pytest.approx(made["ppl"], rel=1e-6)
    quant = json.loads((sweep["runs"] / "prequantized" / "quantize" / "quantize.json").read_text())
    assert quant["format"] == "gptq" and quant["checkpoint"] == str(gptq)
    verdicts = json.loads((sweep["runs"] / "signoff.json").read_text())["verdicts"]
    assert "prequantized" in verdicts


