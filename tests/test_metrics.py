"""Metric names and deltas computed from a hand-made run tree."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest
from fixtures_rundirs import MODEL, NUMBERS, SCHEMES, write_run_tree

from evals.results import ResultFileError, SpeedResult
from pipelines.rundir import scheme_dir
from pipelines.signoff.metrics import (
    GIB,
    METRIC_NAMES,
    metric_table_markdown,
    relative_metrics,
    sanitize_metric_name,
    scheme_metrics,
    speed_metric_at,
    sweep_rows,
)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(runs))
    write_run_tree(runs)
    return runs


def _documented(name: str) -> bool:
    for pattern in METRIC_NAMES:
        regex = re.escape(pattern)
        for placeholder in ("<dataset>", "<task>"):
            regex = regex.replace(re.escape(placeholder), r"[A-Za-z0-9_\-]+")
        for placeholder in ("<N>", "<P>", "<G>"):
            regex = regex.replace(re.escape(placeholder), r"\d+")
        if re.fullmatch(regex, name):
            return True
    return False


def test_scheme_metrics_reads_every_file(runs_dir):
    metrics = scheme_metrics(scheme_dir(MODEL, "gptq-w4g128"))
    n = NUMBERS["gptq-w4g128"]
    assert metrics["ppl.wikitext2"] == 21.0
    assert metrics["ppl.c4"] == 31.5
    assert metrics["word_ppl.wikitext2"] == pytest.approx(31.5)
    assert metrics["acc.hellaswag"] == 0.38
    assert metrics["acc_norm.hellaswag"] == 0.48
    assert metrics["acc_stderr.arc_easy"] == 0.02
    assert "acc_norm.lambada" not in metrics  # lambada has no acc_norm
    assert metrics["acc_mean"] == pytest.approx((0.38 + 0.57 + 0.45) / 3)
    assert metrics["mem.weights_gib"] == pytest.approx(0.5)
    assert metrics["mem.disk_gib"] == pytest.approx(n["disk_bytes"] / GIB)
    assert metrics["mem.peak_gib"] == pytest.approx(2.0)  # no CUDA: peak RSS
    assert metrics["speed.decode_tok_s.bs1.p128.g32"] == 80.0
    assert metrics["speed.prefill_tok_s.bs4.p128.g32"] == 2800.0
    assert metrics["speed.ttft_ms.p50.bs1.p128.g32"] == 22.0
    assert metrics["speed.ttft_ms.p99.bs4.p128.g32"] == 80.0
    assert metrics["speed.itl_ms.p50.bs4.p128.g32"] == 16.6
    assert metrics["speed.roofline_frac.bs1"] == 0.55
    assert not any(".bs16." in k for k in metrics)  # the OOM row gives nothing
    assert metrics["quant.duration_s"] == 120.0
    assert metrics["quant.compression_ratio"] == pytest.approx(4.0)


def test_every_metric_name_is_documented(runs_dir):
    names = set()
    for scheme in SCHEMES:
        metrics = scheme_metrics(scheme_dir(MODEL, scheme))
        names |= set(metrics) | set(relative_metrics(metrics, scheme_metrics(scheme_dir(MODEL, "baseline"))))
    undocumented = sorted(n for n in names if not _documented(n))
    assert not undocumented, undocumented
    table = metric_table_markdown()
    assert all(f"`{pattern}`" in table for pattern in METRIC_NAMES)


def test_relative_metrics_deltas_and_recovery(runs_dir):
    base = scheme_metrics(scheme_dir(MODEL, "baseline"))
    gptq = scheme_metrics(scheme_dir(MODEL, "gptq-w4g128"))
    rel = relative_metrics(gptq, base)
    assert rel["delta.ppl.wikitext2"] == pytest.approx(1.0)
    assert rel["delta.ppl.c4"] == pytest.approx(1.5)
    assert rel["recovery.acc.hellaswag"] == pytest.approx(0.95)
    assert rel["recovery.acc.lambada"] == pytest.approx(0.9)
    assert rel["recovery.acc_norm.hellaswag"] == pytest.approx(0.96)
    assert rel["recovery.acc_mean"] == pytest.approx((0.38 + 0.57 + 0.45) / (0.40 + 0.60 + 0.50))
    assert not any(k.startswith(("delta.acc", "recovery.ppl", "delta.mem")) for k in rel)


def test_relative_metrics_use_only_tasks_both_ran():
    rel = relative_metrics({"acc.a": 0.5, "acc.b": 0.9}, {"acc.a": 0.25, "acc.c": 0.1})
    assert rel == {"recovery.acc.a": 2.0, "recovery.acc_mean": 2.0}
    assert relative_metrics({"acc.a": 0.5}, {"acc.a": 0.0}) == {}


def test_missing_files_leave_their_metrics_out(runs_dir):
    sdir = scheme_dir(MODEL, "int8")
    shutil.rmtree(sdir.bench_dir)
    (sdir.eval_dir / "tasks.json").unlink()
    metrics = scheme_metrics(sdir)
    assert "ppl.wikitext2" in metrics and "quant.duration_s" in metrics
    assert not any(k.startswith(("speed.", "acc", "mem.weights", "mem.peak")) for k in metrics)
    # Disk size falls back to quantize.json when the benchmark did not run.
    assert metrics["mem.disk_gib"] == pytest.approx(NUMBERS["int8"]["disk_bytes"] / GIB)


def test_sweep_rows_have_deltas_against_the_baseline(runs_dir):
    rows = {r["scheme"]: r for r in sweep_rows(MODEL, SCHEMES)}
    assert list(rows) == list(SCHEMES)
    assert rows["baseline"]["delta.ppl.wikitext2"] == 0.0
    assert rows["int8"]["delta.ppl.wikitext2"] == pytest.approx(0.2)
    assert rows["int8"]["recovery.acc.lambada"] == pytest.approx(0.98)


def test_sanitize_metric_name():
    assert sanitize_metric_name("acc.mmlu(5-shot)") == "acc.mmlu_5-shot_"
    assert sanitize_metric_name("ppl.wikitext2") == "ppl.wikitext2"


def test_two_prompt_lengths_at_one_batch_size_are_both_kept(runs_dir):
    """A suite benchmarking prompts of 128 and 512 tokens reports both, each under its own name."""
    path = scheme_dir(MODEL, "int8").bench_dir / SpeedResult.FILE
    speed = SpeedResult.read(path)
    bs1 = next(r for r in speed.results if r["batch_size"] == 1 and r["status"] == "ok")
    longer = {**bs1, "prompt_len": 512, "decode_tok_s": {**bs1["decode_tok_s"], "median": 12.0}}
    dataclasses.replace(speed, results=[*speed.results, longer]).write(path)
    metrics = scheme_metrics(scheme_dir(MODEL, "int8"))
    assert metrics["speed.decode_tok_s.bs1.p128.g32"] == NUMBERS["int8"]["speed"][1][1]
    assert metrics["speed.decode_tok_s.bs1.p512.g32"] == 12.0
    # One number per batch size (a plot axis) takes the shortest prompt.
    assert speed_metric_at(metrics, "speed.decode_tok_s", 1) == "speed.decode_tok_s.bs1.p128.g32"
    assert speed_metric_at(metrics, "speed.decode_tok_s", 8) is None


def test_a_result_file_of_another_shape_is_an_error_naming_the_stage(runs_dir):
    """Readers go through the dataclasses: a file with an unknown key fails loudly, not silently."""
    path = scheme_dir(MODEL, "int8").bench_dir / SpeedResult.FILE
    data = SpeedResult.read(path).to_dict()
    path.write_text(json.dumps({**data, "batch_results": []}), encoding="utf-8")
    with pytest.raises(ResultFileError, match="unknown key"):
        scheme_metrics(scheme_dir(MODEL, "int8"))
