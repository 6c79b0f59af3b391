"""The shared contract every registered quantizer passes on a tiny Llama.

The schemes come from the registry and recipes/schemes (every scheme whose
quantizer is not ``prequantized``; that one is checked by evaluating a checkpoint
another scheme wrote), so a new quantizer is covered with no edit here.

quantize -> save -> reload in a fresh process -> logits close to the dense
model's, per-layer error within a bound for its bit width, fewer bytes on disk
than the baseline where weights are stored compressed, provenance recorded.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

from evals.results import QuantizeResult
from pipelines.execution.local import run_stages_in_process
from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.quantizers import REGISTRY, get_quantizer
from pipelines.recipes import available, load_scheme
from pipelines.rundir import read_json, scheme_dir

TINY_OVERRIDES = {
    "calibration": {"n_samples": 4, "seq_len": 64},
    "calibration_per_scheme": {"awq": {"n_samples": 2, "seq_len": 64}},
}
# The transformers-engine schemes. The GGUF (llama.cpp) schemes have their own round trip and
# sweep on the embedded model (tests/test_gguf.py, tests/test_gguf_sweep.py): llama.cpp's
# converter does not know the pre-tokenizer of the tokenizer the tiny Llama trains.
CONTRACT_SCHEMES = sorted(name for name in available("schemes")
                          if not get_quantizer(load_scheme(name).quantizer).prequantized
                          and get_quantizer(load_scheme(name).quantizer).engine == "transformers")

# Bounds per weight bit width on the tiny random Llama (float32), about 2x the worst scheme
# of that width as measured (torch 2.13 CPU, 2 threads):
#   median per-layer error (raw; fitted for AWQ/SmoothQuant): 8-bit 0.0065 (int8-wo) .. 0.026
#   (fp8, e4m3's 3 mantissa bits); 4-bit 0.092 (nf4) .. 0.12 (gptq g128).
#   logits, ||L_q - L|| / ||L|| on 64 held-out tokens: 8-bit 0.012 (gptq-w8) .. 0.060
#   (fp8-dynamic); 4-bit 0.16 (nf4) .. 0.18 (awq).
# A quantizer that zeroes, scrambles, mis-scales or skips weights lands near 1.0 (or at 0);
# an 8-bit scheme that loses 4 bits of precision exceeds the 8-bit bounds.
# A width not listed uses the next wider listed one's bound (None: the loosest).
MEDIAN_LAYER_ERROR_BOUND = {8: 0.06, 4: 0.25}
LOGITS_ERROR_BOUND = {8: 0.12, 4: 0.36}


def bound_for(bounds: dict[int, float], bits: int | None) -> float:
    wider = [b for b in sorted(bounds) if bits is not None and b >= bits]
    return bounds[wider[0]] if wider else max(bounds.values())


LOGITS_SCRIPT = r"""
import json, sys, torch
from pipelines.quantizers import get_quantizer
checkpoints, ids = json.loads(sys.argv[1]), json.loads(sys.argv[2])
base = None
out = {}
for scheme, (key, path) in checkpoints.items():
    model = get_quantizer(key).load(path, "cpu", "float32")
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits.float()
    if base is None:
        base = logits  # the first entry is the baseline
    out[scheme] = {"finite": bool(torch.isfinite(logits).all()),
                   "rel_error": ((logits - base).norm() / base.norm()).item()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_llama_dir):
    """Quantize the tiny Llama with every scheme once; tests read the run directories."""
    runs = tmp_path_factory.mktemp("runs")
    os.environ["QEVAL_RUNS_DIR"] = str(runs)
    opts = SweepOptions(model=str(tiny_llama_dir), schemes=CONTRACT_SCHEMES, suite="smoke",
                        tasks=[], overrides=TINY_OVERRIDES, quiet=True)
    p = plan(opts)
    write_plan(p, opts)
    order = ["baseline", *[s for s in CONTRACT_SCHEMES if s != "baseline"]]  # the others compare sizes with it
    status = {s: run_stages_in_process(p.model, s, ("quantize",), quiet=True) for s in order}
    yield p.model, status
    os.environ.pop("QEVAL_RUNS_DIR", None)


@pytest.fixture(scope="module")
def reloaded_logits(tiny_runs):
    """Every checkpoint reloaded in one fresh process (nothing cached from quantizing), on held-out tokens."""
    model, status = tiny_runs
    infos = {s: QuantizeResult.read(scheme_dir(model, s).quantize_json) for s in CONTRACT_SCHEMES if status[s] == 0}
    checkpoints = {"baseline": [infos["baseline"].quantizer, infos["baseline"].checkpoint]}
    checkpoints |= {s: [i.quantizer, i.checkpoint] for s, i in infos.items() if s != "baseline"}
    # Held-out tokens: the start of the first layer-error window of a scheme that measured them.
    ids = next(_layer_error_ids(model, s) for s in infos if infos[s].layer_error_windows)
    out = subprocess.run([sys.executable, "-c", LOGITS_SCRIPT, json.dumps(checkpoints), json.dumps(ids)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _layer_error_ids(model: str, scheme: str) -> list[int]:
    from transformers import AutoTokenizer

    from pipelines.quantizers.calibration import layer_error_windows

    info = QuantizeResult.read(scheme_dir(model, scheme).quantize_json)
    tok = AutoTokenizer.from_pretrained(info.checkpoint)
    return layer_error_windows(tok, data_dir=Path(os.environ["QEVAL_DATA_DIR"]), seq_len=64, n_windows=1).windows[0]


def _layer_rows(path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_registered_quantizer_has_a_scheme_recipe():
    used = {load_scheme(name).quantizer for name in available("schemes")}
    assert set(REGISTRY) == used
    # and every one but the prequantized evaluator is in the contract
    assert {load_scheme(s).quantizer for s in CONTRACT_SCHEMES} == {
        k for k in REGISTRY if k != "prequantized" and get_quantizer(k).engine == "transformers"}


@pytest.mark.slow  # quantizes with every library (gptqmodel, llm-compressor, bitsandbytes, torchao)
@pytest.mark.parametrize("scheme", CONTRACT_SCHEMES)
def test_quantizer_contract(tiny_runs, reloaded_logits, scheme):
    model, status = tiny_runs
    sdir = scheme_dir(model, scheme)
    assert status[scheme] == 0, read_json(sdir.manifest_path)
    info = QuantizeResult.read(sdir.quantize_json)
    quantizer = get_quantizer(info.quantizer)
    bits = quantizer.weight_bits(quantizer.parse_params(info.params, scheme))

    # Provenance
    assert info.library == quantizer.library and info.format == quantizer.format
    assert info.library_version and info.library_version != "missing"
    assert info.device == "cpu" and info.duration_s > 0 and info.peak_rss_bytes > 0
    assert info.disk_bytes > 0 and info.backend
    assert info.emulated == quantizer.emulated_on("cpu", info.format)
    if quantizer.calibrates:
        cal = info.calibration
        assert (cal["dataset"], cal["seq_len"]) == ("c4", 64) and cal["n_samples"] >= 2
        assert len(cal["token_ids_sha256"]) == 64
    else:
        assert info.calibration is None

    # Reloaded in a fresh process: finite logits, close to the dense model's for its bit width
    logits = reloaded_logits[scheme]
    assert logits["finite"]
    if quantizer.is_reference:
        assert logits["rel_error"] == 0
    else:
        bound = bound_for(LOGITS_ERROR_BOUND, bits)
        assert 0 < logits["rel_error"] < bound, (scheme, bits, logits["rel_error"], bound)

    # Smaller on disk than the baseline wherever weights are stored compressed
    if quantizer.stores_compressed:
        assert info.disk_bytes < info.baseline_disk_bytes, (info.disk_bytes, info.baseline_disk_bytes)
        assert info.compression_ratio > 1

    # Per-layer error on the held-out windows: raw figure, median within the bound for its bit width
    if quantizer.measures_layer_errors:
        rows = [r for r in _layer_rows(sdir.layer_errors_csv) if r["quantized"] == "1"]
        assert rows and 0 < len(info.worst_layers) <= 10
        raw = [float(r["rel_error"]) for r in rows]
        assert info.worst_layers[0]["rel_error"] == pytest.approx(max(raw), rel=1e-5)  # ranked by the raw figure
        # Schemes that fold input scales into the op before are judged on their fitted figure
        # (the raw one includes the folded scales by construction); the raw one is still reported.
        judged = [float(r["rel_error_fitted"]) for r in rows] if quantizer.folds_input_scales else raw
        median = statistics.median(judged)
        bound = bound_for(MEDIAN_LAYER_ERROR_BOUND, bits)
        assert 0 < median < bound, (scheme, bits, median, bound)
    else:
        assert not sdir.layer_errors_csv.is_file() and info.worst_layers == [] and info.layer_error_windows is None


@pytest.mark.slow  # reads the every-library fixture
def test_every_scheme_is_scored_on_the_same_held_out_windows(tiny_runs):
    model, status = tiny_runs
    infos = [QuantizeResult.read(scheme_dir(model, s).quantize_json) for s in CONTRACT_SCHEMES if status[s] == 0]
    measured = [i for i in infos if get_quantizer(i.quantizer).measures_layer_errors]
    assert len({i.layer_error_windows["token_ids_sha256"] for i in measured}) == 1
    windows = measured[0].layer_error_windows
    held_first = int(windows["source"]["documents"].strip("[)").split(",")[0])
    for info in measured:
        if info.calibration:  # calibration documents end before the held-out ones start
            stop = int(info.calibration["source"]["documents"].strip("[)").split(",")[1])
            assert stop <= held_first, (info.scheme, info.calibration["source"], windows["source"])


@pytest.mark.slow  # reads the every-library fixture
def test_prequantized_evaluates_a_checkpoint_another_scheme_wrote(tiny_runs, tmp_path, monkeypatch):
    """The prequantized quantizer reads a GPTQ checkpoint as published: nothing written, no layer report."""
    model, status = tiny_runs
    gptq = QuantizeResult.read(scheme_dir(model, "gptq").quantize_json)
    opts = SweepOptions(model=model_source(model), schemes=["prequantized"], suite="smoke", tasks=[],
                        quiet=True, prequantized=gptq.checkpoint)
    p = plan(opts)
    write_plan(p, opts)
    assert run_stages_in_process(p.model, "prequantized", ("quantize",), quiet=True) == 0
    info = QuantizeResult.read(scheme_dir(p.model, "prequantized").quantize_json)
    assert (info.format, info.checkpoint, info.emulated) == ("gptq", gptq.checkpoint, False)
    assert info.worst_layers == [] and not scheme_dir(p.model, "prequantized").layer_errors_csv.is_file()
    assert not scheme_dir(p.model, "prequantized").checkpoint_dir.exists()


def model_source(model: str) -> str:
    from pipelines.recipes import ResolvedRecipe

    return ResolvedRecipe.from_yaml(scheme_dir(model, "baseline").recipe_path).model.source
