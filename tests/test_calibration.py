"""Calibration samples: seeded, disjoint from every perplexity window, clear when too short."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from evals.data import DataError, perplexity_text
from pipelines.quantizers.calibration import build_calibration


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_calibration_never_overlaps_perplexity_text(tok, data_dir):
    calib = build_calibration(tok, dataset="c4", n_samples=16, seq_len=128, seed=0, data_dir=data_dir)
    assert len(calib.windows) == 16 and all(len(w) == 128 for w in calib.windows)
    eval_texts = [perplexity_text(name, data_dir)[0] for name in ("c4", "wikitext2")]
    for window in calib.windows:
        # a 40-token span from the middle of each window, as text
        snippet = tok.decode(window[40:80])
        assert all(snippet not in text for text in eval_texts)
    # C4 documents [1000, 2000) are the calibration half; the last 50 are held out for layer errors.
    assert calib.source["documents"] == "[1000, 1950)"


def test_calibration_is_seeded(tok, data_dir):
    a = build_calibration(tok, dataset="c4", n_samples=4, seq_len=64, seed=1, data_dir=data_dir)
    b = build_calibration(tok, dataset="c4", n_samples=4, seq_len=64, seed=1, data_dir=data_dir)
    c = build_calibration(tok, dataset="c4", n_samples=4, seq_len=64, seed=2, data_dir=data_dir)
    assert a.windows == b.windows and a.windows != c.windows
    assert a.to_dict()["token_ids_sha256"] == b.to_dict()["token_ids_sha256"]


def test_too_short_calibration_names_the_fix(tok, data_dir):
    with pytest.raises(DataError, match="calibration set too short.*Lower calibration.seq_len"):
        build_calibration(tok, dataset="c4", n_samples=1, seq_len=5_000_000, seed=0, data_dir=data_dir)


def test_wikitext_calibration_offline_would_overlap_and_is_refused(tok, data_dir):
    with pytest.raises(DataError, match="train split"):
        build_calibration(tok, dataset="wikitext2", n_samples=1, seq_len=64, seed=0, data_dir=data_dir)
