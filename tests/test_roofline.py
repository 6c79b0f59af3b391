"""Bandwidth measurement and its cache, and the batch-1 decode roofline arithmetic."""

from __future__ import annotations

import json
import math

import pytest

SMALL_COPY = {"size_bytes": 4 * 2**20, "iters": 3, "warmup": 1}


def test_measure_bandwidth_is_positive():
    from evals.roofline import measure_bandwidth

    result = measure_bandwidth("cpu", **SMALL_COPY)
    assert math.isfinite(result["bandwidth_gb_s"]) and result["bandwidth_gb_s"] > 0
    assert result["bandwidth_bytes_s"] == pytest.approx(result["bandwidth_gb_s"] * 1e9)
    assert result["min_gb_s"] <= result["bandwidth_gb_s"] <= result["max_gb_s"]
    assert result["size_bytes"] == 4 * 2**20 and result["iters"] == 3


def test_bandwidth_is_cached_per_device(tmp_path, monkeypatch):
    import evals.roofline as roofline_module
    from evals.roofline import cached_bandwidth

    cache_path = tmp_path / "cache" / "bandwidth.json"
    first = cached_bandwidth("cpu", cache_path, **SMALL_COPY)
    assert first["cached"] is False
    stored = json.loads(cache_path.read_text())
    assert list(stored) == [first["device_name"]]

    def no_measuring(*args, **kwargs):
        raise AssertionError("bandwidth was measured again instead of read from the cache")

    monkeypatch.setattr(roofline_module, "measure_bandwidth", no_measuring)
    second = cached_bandwidth("cpu", cache_path, **SMALL_COPY)
    assert second["cached"] is True
    assert second["bandwidth_bytes_s"] == first["bandwidth_bytes_s"]


def test_unreadable_cache_is_measured_again(tmp_path):
    from evals.roofline import cached_bandwidth

    cache_path = tmp_path / "bandwidth.json"
    cache_path.write_text("{not json")
    result = cached_bandwidth("cpu", cache_path, **SMALL_COPY)
    assert result["cached"] is False
    assert result["device_name"] in json.loads(cache_path.read_text())


def test_roofline_arithmetic():
    from evals.roofline import roofline

    # 100 MB of weights + 20 kB/token KV at a mean context of 100 = 102 MB per token;
    # at 51 GB/s the bound is 500 tok/s, so 125 tok/s is a quarter of it.
    result = roofline(125.0, 100_000_000, 20_000, 100, 51e9)
    assert result["bytes_per_token"] == 102_000_000
    assert result["bound_tok_s"] == pytest.approx(500.0)
    assert result["frac"] == pytest.approx(0.25)
    assert result["bandwidth_gb_s"] == pytest.approx(51.0)
    assert result["decode_tok_s_bs1"] == 125.0
    # An untied input embedding is gathered one row at a time, not read whole.
    untied = roofline(125.0, 100_000_000, 20_000, 100, 51e9, unread_weight_bytes=2_000_000)
    assert untied["bytes_per_token"] == 100_000_000
    assert untied["bound_tok_s"] == pytest.approx(510.0)


@pytest.mark.parametrize("args", [
    (10.0, 0, 0, 0, 1e9),
    (10.0, 1e6, 100, 10, 0),
    (float("nan"), 1e6, 100, 10, 1e9),
    (10.0, -1, 100, 10, 1e9),
])
def test_roofline_rejects_unusable_input(args):
    from evals.roofline import RooflineError, roofline

    with pytest.raises(RooflineError):
        roofline(*args)
