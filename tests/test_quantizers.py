"""The shared contract every registered quantizer passes on a tiny Llama.

quantize -> save -> reload in a fresh process -> finite logits, fewer bytes on
disk than the baseline where weights are stored compressed, provenance recorded.
"""

from __future__ import annotations

import pytest
from helpers import reload_in_fresh_process

from pipelines.execution.local import run_stages_in_process
from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.quantizers import REGISTRY, get_quantizer
from pipelines.rundir import read_json, scheme_dir

TINY_OVERRIDES = {
    "calibration": {"n_samples": 4, "seq_len": 64},
    "calibration_per_scheme": {"awq": {"n_samples": 2, "seq_len": 64}},
}
CONTRACT_SCHEMES = ["baseline", "gptq", "gptq-w8", "awq", "int8", "int8-w8a8", "fp8", "fp8-dynamic", "nf4"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_llama_dir):
    """Quantize the tiny Llama with every scheme once; tests read the run directories."""
    import os

    runs = tmp_path_factory.mktemp("runs")
    os.environ["QEVAL_RUNS_DIR"] = str(runs)
    opts = SweepOptions(model=str(tiny_llama_dir), schemes=CONTRACT_SCHEMES, suite="smoke",
                        tasks=[], overrides=TINY_OVERRIDES, quiet=True)
    p = plan(opts)
    write_plan(p, opts)
    status = {s: run_stages_in_process(p.model, s, ("quantize",), quiet=True) for s in CONTRACT_SCHEMES}
    yield p.model, status
    os.environ.pop("QEVAL_RUNS_DIR", None)


def test_every_registered_quantizer_has_a_scheme_recipe():
    from pipelines.recipes import available, load_scheme

    used = {load_scheme(name).quantizer for name in available("schemes")}
    assert set(REGISTRY) == used


@pytest.mark.parametrize("scheme", CONTRACT_SCHEMES)
def test_quantizer_contract(tiny_runs, scheme):
    model, status = tiny_runs
    assert status[scheme] == 0, read_json(scheme_dir(model, scheme).manifest_path)
    sdir = scheme_dir(model, scheme)
    info = read_json(sdir.quantize_json)
    quantizer = get_quantizer(info["quantizer"])

    # Provenance
    assert info["library"] == quantizer.library
    assert info["library_version"] and info["library_version"] != "missing"
    assert info["device"] == "cpu" and info["duration_s"] > 0 and info["peak_rss_bytes"] > 0
    assert info["disk_bytes"] > 0 and info["backend"]
    if quantizer.needs_calibration:
        cal = info["calibration"]
        assert (cal["dataset"], cal["seq_len"]) == ("c4", 64) and cal["n_samples"] >= 2
        assert len(cal["token_ids_sha256"]) == 64

    # Reload in a fresh process and run a forward pass
    reloaded = reload_in_fresh_process(info["quantizer"], info["checkpoint"])
    assert reloaded["finite"] and reloaded["shape"][-1] > 0

    # Smaller on disk than the baseline wherever weights are stored compressed
    if quantizer.stores_compressed:
        assert info["disk_bytes"] < info["baseline_disk_bytes"], (info["disk_bytes"], info["baseline_disk_bytes"])
        assert info["compression_ratio"] > 1
        # and every weight-quantized scheme reports per-layer errors
        assert sdir.layer_errors_csv.is_file()
        assert 0 < len(info["worst_layers"]) <= 10
        # Relative output errors of a sane quantizer stay well below 1 (AWQ and SmoothQuant
        # fold scales into neighbouring ops; the report must account for them).
        assert all(0 <= w["rel_error"] < 1.0 for w in info["worst_layers"]), info["worst_layers"]
