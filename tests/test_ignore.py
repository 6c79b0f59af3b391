"""Keeping a layer in high precision with `ignore:` changes the checkpoint and the layer report."""

from __future__ import annotations

import csv

import yaml

from pipelines.execution.local import run_stages_in_process
from pipelines.execution.plan import SweepOptions, plan, write_plan
from pipelines.rundir import read_json, scheme_dir

LAYER = "model.layers.0.mlp.down_proj"


def quantize_nf4(tiny_llama_dir, runs, monkeypatch) -> tuple[dict, dict[str, dict]]:
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(runs))
    opts = SweepOptions(model=str(tiny_llama_dir), schemes=["nf4"], suite="smoke", tasks=[], quiet=True,
                        overrides={"calibration": {"n_samples": 2, "seq_len": 64}})
    p = plan(opts)
    write_plan(p, opts)
    assert run_stages_in_process(p.model, "nf4", ("quantize",), quiet=True) == 0
    sdir = scheme_dir(p.model, "nf4")
    with open(sdir.layer_errors_csv) as f:
        rows = {r["layer"]: r for r in csv.DictReader(f)}
    return read_json(sdir.quantize_json), rows


def test_ignoring_a_layer_changes_the_result(tmp_path, recipes, tiny_llama_dir, monkeypatch):
    default_info, default_rows = quantize_nf4(tiny_llama_dir, tmp_path / "a", monkeypatch)
    scheme_file = recipes / "schemes" / "nf4.yaml"
    data = yaml.safe_load(scheme_file.read_text())
    data["ignore"] = ["lm_head", LAYER]
    scheme_file.write_text(yaml.safe_dump(data))
    kept_info, kept_rows = quantize_nf4(tiny_llama_dir, tmp_path / "b", monkeypatch)

    assert default_rows[LAYER]["quantized"] == "1" and float(default_rows[LAYER]["rel_error"]) > 0.01
    assert kept_rows[LAYER]["quantized"] == "0" and float(kept_rows[LAYER]["rel_error"]) < 1e-6
    assert kept_info["ignore"] == ["lm_head", LAYER]
    assert kept_info["disk_bytes"] > default_info["disk_bytes"]  # one layer stays dense
    assert LAYER not in [w["layer"] for w in kept_info["worst_layers"]]
