"""Perplexity protocols against plain reference computations on a tiny Llama."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.data import perplexity_text
from evals.perplexity import PerplexityError, compute_perplexity, windows_for


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def wikitext(data_dir):
    return perplexity_text("wikitext2", data_dir)


def test_windows_cover_every_target_once():
    assert windows_for(10, "gptq", 4, None) == [(0, 4, 0), (4, 8, 4)]
    # stride == seq_len cannot score a window's first token (no context): like the GPTQ protocol
    assert windows_for(64, "sliding", 16, 16) == [(0, 16, 0), (16, 32, 16), (32, 48, 32), (48, 64, 48)]
    for n, seq, stride in [(100, 16, 8), (101, 16, 5), (64, 16, 15)]:
        scored = []
        for b, e, first in windows_for(n, "sliding", seq, stride):
            assert e - b <= seq
            scored += list(range(first + 1, e))
        assert scored == list(range(1, n))


def test_gptq_protocol_matches_a_plain_loop(tiny, wikitext):
    model, tok = tiny
    text, source = wikitext
    result = compute_perplexity(model, tok, text, dataset="wikitext2", source=source, seq_len=64, max_windows=5,
                                batch_size=2, show_progress=False)
    ids = tok(text, return_tensors="pt").input_ids[0]
    losses = []
    with torch.no_grad():
        for i in range(5):
            window = ids[i * 64 : (i + 1) * 64].unsqueeze(0)
            losses.append(model(window, labels=window).loss.item())
    assert result.n_windows == 5 and result.n_tokens == 5 * 63
    assert result.ppl == pytest.approx(math.exp(sum(losses) / 5), rel=1e-4)
    assert result.window_nll == pytest.approx(losses, rel=1e-4)
    assert result.source["sha256"] and len(result.token_ids_sha256) == 64
    assert result.bits_per_byte > 0 and result.word_ppl > result.ppl  # fewer words than tokens


@pytest.mark.parametrize("protocol", ["gptq", "sliding"])
def test_prefix_tokenization_equals_full_tokenization(tiny, wikitext, protocol):
    """max_windows tokenizes only a prefix; its windows must be those of the whole text's ids."""
    model, tok = tiny
    text, _ = wikitext
    capped = compute_perplexity(model, tok, text, dataset="w", protocol=protocol, seq_len=32, max_windows=3,
                                show_progress=False)
    # No max_windows: the whole text is tokenized (the path without the prefix shortcut).
    full = compute_perplexity(model, tok, text[:8_000], dataset="w", protocol=protocol, seq_len=32,
                              show_progress=False)
    assert full.n_windows > 3
    ids = tok(text[:8_000], return_tensors="pt").input_ids[0]  # the full run's ids
    first = windows_for(len(ids), protocol, 32, None)[:3]
    scored = torch.cat([ids[f + 1 : e] for _, e, f in first])
    assert capped.token_ids_sha256 == hashlib.sha256(scored.to(torch.int64).numpy().tobytes()).hexdigest()
    assert capped.window_nll == pytest.approx(full.window_nll[:3], rel=1e-6)
    assert capped.window_tokens == full.window_tokens[:3]


def test_chunked_nll_equals_one_call(tiny, wikitext):
    """The NLL computed over chunks of positions equals one fp32 cross-entropy over all of them."""
    from evals.perplexity import token_nll

    model, tok = tiny
    ids = tok(wikitext[0][:5_000], return_tensors="pt").input_ids[0][:2 * 96].view(2, 96)
    with torch.inference_mode():
        logits = model(ids).logits[:, :-1].to(torch.bfloat16)
    targets = ids[:, 1:]
    whole = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), reduction="none"
    ).view(targets.shape)
    for chunk in (1, 7, 32, 95, 1000, None):
        chunked = token_nll(logits, targets, chunk_positions=chunk)
        assert chunked.dtype == torch.float32 and chunked.shape == whole.shape
        assert torch.allclose(chunked, whole, rtol=1e-6, atol=1e-6), chunk  # cross_entropy to float rounding
        assert torch.equal(chunked, token_nll(logits, targets, chunk_positions=logits.shape[1]))  # one chunk
    with pytest.raises(PerplexityError, match="chunk_positions"):
        token_nll(logits, targets, chunk_positions=0)


def test_sliding_with_full_stride_equals_gptq_and_smaller_stride_differs(tiny, wikitext):
    model, tok = tiny
    text = wikitext[0][:20_000]
    gptq = compute_perplexity(model, tok, text, dataset="w", seq_len=32, show_progress=False)
    sliding = compute_perplexity(model, tok, text, dataset="w", protocol="sliding", seq_len=32, stride=32,
                                 show_progress=False)
    overlap = compute_perplexity(model, tok, text, dataset="w", protocol="sliding", seq_len=32, stride=8,
                                 show_progress=False)
    # identical windows, plus a shorter last window over the remainder
    assert sliding.window_nll[: gptq.n_windows] == pytest.approx(gptq.window_nll, rel=1e-5)
    assert sliding.n_windows == gptq.n_windows + 1
    assert overlap.n_tokens > gptq.n_tokens  # every target scored once, including the remainder
    assert overlap.ppl != pytest.approx(gptq.ppl, rel=1e-6)


def test_bad_windows_are_errors(tiny):
    model, tok = tiny
    with pytest.raises(PerplexityError, match="too small for one window"):
        compute_perplexity(model, tok, "a few words", dataset="w", seq_len=64, show_progress=False)
    with pytest.raises(PerplexityError, match="longer than the model's context"):
        compute_perplexity(model, tok, "text " * 2000, dataset="w", seq_len=1024, max_context=512, show_progress=False)
