"""Speed measurement structure, out-of-memory handling and profiling (what ran: test_kernels.py).

No test asserts a speed: timings on shared CPUs swing by large factors.
"""

from __future__ import annotations

import functools
import json
import math

import pytest

SMALL = {"prompt_lens": (16,), "gen_lens": (4,), "warmup": 1, "iters": 3, "show_progress": False}


@pytest.fixture(scope="module")
def tiny_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)


def _assert_summary(summary: dict, n_min: int) -> None:
    assert summary["n"] >= n_min
    for key in ("median", "mean", "min", "max", "p10", "p50", "p90", "p99"):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert summary["min"] <= summary["p10"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]
    assert summary["median"] == pytest.approx(summary["p50"])


def test_measure_speed_returns_sane_structures(tiny_model):
    from evals.speed import measure_speed
    from pipelines.environment import cpu_model

    report = measure_speed(tiny_model, batch_sizes=(1, 2), **SMALL)
    # The kind is what the sign-off compares with a model's target_device; the name is for people.
    assert report["device_kind"] == "cpu" and report["device_name"] == cpu_model()
    assert "device" not in report and "kernel" not in report
    settings = report["settings"]
    assert settings["warmup"] == 1 and settings["iters"] == 3 and settings["min_time_s"] == 0.0
    assert settings["dtype"] == "float32" and settings["device"] == "cpu" and settings["torch_threads"] >= 1
    assert [(r["batch_size"], r["prompt_len"], r["gen_len"]) for r in report["results"]] == [(1, 16, 4), (2, 16, 4)]
    for row in report["results"]:
        assert row["status"] == "ok" and row["error"] is None
        assert row["iterations"] >= 3
        for key in ("prefill_tok_s", "ttft_ms", "decode_tok_s"):
            _assert_summary(row[key], row["iterations"])
        # Every iteration times gen_len - 1 decode steps after the prefill's first token.
        _assert_summary(row["itl_ms"], row["iterations"] * 3)
        assert row["itl_ms"]["n"] == row["iterations"] * 3
        assert row["mean_decode_context_len"] == 18
    json.dumps(report)  # the record goes to speed.json as is
    assert tiny_model.training is False


def test_min_time_keeps_iterating_past_iters(tiny_model):
    from evals.speed import measure_speed

    report = measure_speed(tiny_model, batch_sizes=(1,), **{**SMALL, "iters": 1, "min_time_s": 0.3})
    row = report["results"][0]
    assert row["elapsed_s"] >= 0.3
    assert row["ttft_ms"]["n"] == row["iterations"] >= 1
    timed_s = (row["ttft_ms"]["mean"] * row["ttft_ms"]["n"] + row["itl_ms"]["mean"] * row["itl_ms"]["n"]) / 1000
    assert timed_s <= row["elapsed_s"]
    # One iteration is enough only when it alone outlasted min_time_s (a loaded machine).
    assert row["iterations"] > 1 or timed_s >= 0.25


def _fail_at_batch(model, monkeypatch, batch_size: int, error: Exception) -> None:
    """Make the model's forward raise ``error`` for one batch size only."""
    original = model.forward

    @functools.wraps(original)
    def forward(input_ids=None, *args, **kwargs):
        if input_ids is not None and input_ids.shape[0] == batch_size:
            raise error
        return original(input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)


@pytest.mark.parametrize("error", [
    "cuda", RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    MemoryError(),
])
def test_out_of_memory_batch_is_recorded_and_others_still_measured(tiny_model, monkeypatch, error):
    import torch

    from evals.speed import measure_speed

    if error == "cuda":
        error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    _fail_at_batch(tiny_model, monkeypatch, 8, error)
    # The failing batch sits between two others: the one after it must still be measured.
    report = measure_speed(tiny_model, batch_sizes=(1, 8, 2), **{**SMALL, "iters": 1, "warmup": 0})
    by_batch = {r["batch_size"]: r for r in report["results"]}
    assert by_batch[8]["status"] == "oom"
    assert type(error).__name__ in by_batch[8]["error"]
    assert by_batch[8]["decode_tok_s"] is None and by_batch[8]["itl_ms"] is None
    for batch in (1, 2):
        assert by_batch[batch]["status"] == "ok"
        assert by_batch[batch]["decode_tok_s"]["median"] > 0


def test_other_errors_are_recorded_as_failed(tiny_model, monkeypatch):
    from evals.speed import measure_speed

    _fail_at_batch(tiny_model, monkeypatch, 2, ValueError("shape mismatch in attention"))
    report = measure_speed(tiny_model, batch_sizes=(2, 1), **SMALL)
    assert [r["status"] for r in report["results"]] == ["failed", "ok"]
    assert "shape mismatch" in report["results"][0]["error"]


def test_bad_settings_raise_a_clear_error(tiny_model):
    from evals.speed import SpeedMeasurementError, measure_speed

    with pytest.raises(SpeedMeasurementError, match="gen_lens must be >= 2"):
        measure_speed(tiny_model, batch_sizes=(1,), gen_lens=(1,), show_progress=False)
    with pytest.raises(SpeedMeasurementError, match="batch_sizes"):
        measure_speed(tiny_model, batch_sizes=(), show_progress=False)


def test_profile_model_writes_summary_and_chrome_trace(tiny_model, tmp_path):
    from evals.profiling import profile_model

    summary = profile_model(tiny_model, out_dir=tmp_path / "prof", prompt_len=8, decode_steps=2)
    written = json.loads((tmp_path / "prof" / "profile.json").read_text())
    assert written == summary
    assert sum(row["count"] for row in written["linear_layers"]) == 15
    ops = written["top_by_self_cpu"]
    assert 0 < len(ops) <= 25
    assert any(op["name"] in ("aten::mm", "aten::addmm", "aten::linear") for op in ops)
    assert all(op["calls"] >= 1 and op["self_cpu_time_us"] >= 0 for op in ops)
    times = [op["self_cpu_time_us"] for op in ops]
    assert times == sorted(times, reverse=True)
    trace = json.loads((tmp_path / "prof" / "trace.json").read_text())
    assert trace["traceEvents"]
    assert any(e.get("name") == "qeval.decode_step" for e in trace["traceEvents"])
