"""Per-layer error: scored on held-out windows disjoint from calibration, with the raw figure."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.quantizers.calibration import HELDOUT_DOCS, build_calibration, layer_error_windows
from pipelines.quantizers.layer_errors import capture_linear_inputs, measure_layer_errors

NGRAM = 24  # a shared run of this many tokens would mean the same text


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def _ngrams(windows: list[list[int]], n: int) -> set[tuple[int, ...]]:
    return {tuple(w[i : i + n]) for w in windows for i in range(len(w) - n + 1)}


def test_layer_error_windows_never_overlap_calibration(tok, data_dir):
    held = layer_error_windows(tok, data_dir=data_dir, seq_len=256, n_windows=4)
    assert len(held.windows) == 4 and all(len(w) == 256 for w in held.windows)
    # A calibration large enough to tokenize every calibration document, so its windows
    # reach the end of what calibration may draw from.
    calib = build_calibration(tok, dataset="c4", n_samples=400, seq_len=4096, seed=0, data_dir=data_dir)
    assert not _ngrams(held.windows, NGRAM) & _ngrams(calib.windows, NGRAM)
    # The two document ranges are disjoint and adjacent: calibration stops where the held-out slice starts.
    cal_first, cal_stop = (int(x) for x in calib.source["documents"].strip("[)").split(","))
    held_first, held_stop = (int(x) for x in held.source["documents"].strip("[)").split(","))
    assert cal_stop == held_first and held_stop - held_first == HELDOUT_DOCS and cal_first < cal_stop


def test_layer_error_windows_are_fixed(tok, data_dir):
    a = layer_error_windows(tok, data_dir=data_dir, seq_len=64, n_windows=2)
    b = layer_error_windows(tok, data_dir=data_dir, seq_len=64, n_windows=2)
    assert a.to_dict() == b.to_dict() and a.windows == b.windows


@pytest.fixture(scope="module")
def base_and_int8(tiny_llama_dir):
    """The tiny Llama, and a copy quantized in memory with torchao's int8 weight-only RTN."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    quant = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    quantize_(quant, Int8WeightOnlyConfig())
    return base, quant


@pytest.mark.parametrize("folds_input_scales", [False, True])
def test_raw_error_equals_direct_computation(base_and_int8, tok, data_dir, folds_input_scales):
    base, quant = base_and_int8
    windows = layer_error_windows(tok, data_dir=data_dir, seq_len=32, n_windows=2).windows
    errors = measure_layer_errors(base, quant, windows, ignored=set(), max_rows=64,
                                  folds_input_scales=folds_input_scales)
    layer = "model.layers.1.mlp.down_proj"
    reported = next(e for e in errors if e.layer == layer)

    x = capture_linear_inputs(base, [layer], windows, 64)[layer]
    w = base.get_submodule(layer).weight
    with torch.inference_mode():
        ref = x @ w.T
        out = quant.get_submodule(layer)(x)
    direct = ((ref - out).norm() / ref.norm()).item()
    assert reported.rel_error == pytest.approx(direct, rel=1e-5)
    assert 1e-4 < direct < 0.05  # int8 RTN on a random layer: small but not zero
    # The fitted figure sits beside the raw one, only for schemes that fold input scales.
    assert (reported.rel_error_fitted is not None) == folds_input_scales
    raw = [e.rel_error for e in errors]
    assert raw == sorted(raw, reverse=True)  # worst raw error first
