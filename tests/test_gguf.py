"""llama.cpp GGUF schemes: the build's skip path, a GGUF round trip, and F16 against the HF baseline."""

from __future__ import annotations

import json
import math

import pytest

from pipelines.errors import UnsupportedHere
from pipelines.llamacpp import build, tools


def _built() -> bool:
    try:
        tools.tool_path("llama-quantize")
        import importlib.util

        return importlib.util.find_spec("llama_cpp") is not None
    except UnsupportedHere:
        return False


needs_llamacpp = pytest.mark.skipif(not _built(), reason="llama.cpp is not built here (make setup)")


def test_build_without_compiler_records_reason_and_gguf_schemes_skip(tmp_path, monkeypatch, tiny_llama_dir):
    """No cmake, ninja or compiler on PATH: the build records why, and only GGUF schemes skip."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("QEVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QEVAL_LLAMACPP_DIR", raising=False)

    assert build.build() is None
    failed = json.loads((tools.cache_root() / tools.build_dir_name() / tools.FAILED_INFO).read_text())
    assert "cmake" in failed["reason"] and "make setup" in failed["reason"]
    assert build.main([]) == 0  # `make setup` goes on
    with pytest.raises(UnsupportedHere, match="could not be built: `cmake` is not installed"):
        tools.tool_path("llama-server")

    from pipelines.execution.plan import SweepOptions, plan

    p = plan(SweepOptions(model=str(tiny_llama_dir), schemes=["baseline", "int8", "gguf-q4_k_m", "gguf-iq4_xs"],
                          suite="smoke", tasks=[]))
    assert set(p.skipped) == {"gguf-q4_k_m", "gguf-iq4_xs"}
    assert all("cmake" in why for why in p.skipped.values())
    assert {"baseline", "int8"} <= set(p.recipes)


def test_tool_path_before_any_build_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("QEVAL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("QEVAL_LLAMACPP_DIR", raising=False)
    with pytest.raises(UnsupportedHere, match="make setup"):
        tools.tool_path("llama-bench")
    with pytest.raises(UnsupportedHere, match="not one of the llama.cpp tools"):
        tools.tool_path("llama-cli")


@pytest.fixture(scope="module")
def embedded_source() -> str:
    from pipelines.recipes import embedded

    if not embedded.is_prepared():
        pytest.skip("the embedded model is not prepared (make setup)")
    return str(embedded.checkpoint_dir())


@pytest.mark.slow
@needs_llamacpp
def test_gguf_round_trip_quantize_reload_finite_logits(tmp_path, embedded_source):
    """F16 conversion (shared, cached), Q4_K_M with llama-quantize, reload through llama.cpp."""
    import torch

    from evals.llamacpp_eval import LlamaCppScorer
    from pipelines.llamacpp.convert import f16_gguf
    from pipelines.quantizers import get_quantizer
    from pipelines.quantizers.base import QuantizeRequest

    quantizer = get_quantizer("gguf")
    params = quantizer.parse_params({"type": "Q4_K_M"}, "test")
    quantizer.check_environment("cpu", params)
    request = QuantizeRequest(source=embedded_source, revision=None, dtype="bfloat16", device="cpu",
                              params=params, ignore=[], calibration=None, out_dir=tmp_path)
    outcome = quantizer.quantize(request)
    f16 = f16_gguf(embedded_source)
    gguf = tmp_path / "model.gguf"
    info = outcome.engine_info
    assert info["type"] == "Q4_K_M" and info["bpw_source"] == "llama-quantize"
    assert 4.0 < info["bits_per_weight"] < 8.0, info["bits_per_weight"]
    assert info["gguf_bytes"] == gguf.stat().st_size < 0.6 * f16.stat().st_size
    types = {t["type"] for t in info["tensors"]}
    assert "Q4_K" in types and "F32" in types  # norms stay f32
    quantized = [e for e in outcome.layer_errors if e.quantized]
    assert quantized and all(0.0 < e.rel_error < 0.5 for e in quantized)

    ids = torch.arange(1000, 1064).view(1, -1)
    ref = LlamaCppScorer(f16, n_ctx=128).logits(ids)
    got = LlamaCppScorer(gguf, n_ctx=128).logits(ids)
    assert got.shape == (1, 64, 49152) and torch.isfinite(got).all()
    # The quantized model still predicts like its F16 source on most positions.
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.5


@pytest.mark.slow
@needs_llamacpp
def test_gguf_f16_perplexity_matches_hf_baseline(embedded_source, data_dir):
    """llama.cpp's F16 GGUF and transformers score the same token ids to within rounding.

    Tolerances (measured on the quick suite's 16 + 16 windows of 512, WikiText-2 and C4):
    against fp32 transformers the ratio of perplexities was within 1.2e-4 and no window's mean
    NLL differed by more than 4.6e-4 nats, the size of fp16 rounding (2^-11 relative) of weights
    and activations; 1e-3 leaves twice that per window. Against the bf16 baseline (bf16 weights
    and activations: 2^-8 relative) the ratio was within 5.4e-4 and the worst window 4.6e-3
    nats; 5e-3 bounds even one window at its worst, and is a tenth of the 5% perplexity gate.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evals.data import perplexity_text
    from evals.llamacpp_eval import LlamaCppScorer
    from evals.perplexity import compute_perplexity
    from pipelines.llamacpp.convert import f16_gguf

    tok = AutoTokenizer.from_pretrained(embedded_source)
    text, _ = perplexity_text("wikitext2", data_dir)

    def ppl(model):
        return compute_perplexity(model, tok, text, dataset="wikitext2", protocol="gptq", seq_len=512,
                                  max_windows=4, batch_size=4, show_progress=False)

    gguf = ppl(LlamaCppScorer(f16_gguf(embedded_source), n_ctx=512, label="gguf:F16"))
    for dtype, tolerance in ((torch.float32, 1e-3), (torch.bfloat16, 5e-3)):
        hf = ppl(AutoModelForCausalLM.from_pretrained(embedded_source, dtype=dtype).eval())
        assert gguf.token_ids_sha256 == hf.token_ids_sha256  # the same scored tokens
        assert abs(math.log(gguf.ppl / hf.ppl)) < tolerance, (dtype, gguf.ppl, hf.ppl)
        worst = max(abs(a - b) for a, b in zip(gguf.window_nll, hf.window_nll, strict=True))
        assert worst < tolerance, (dtype, worst)


@pytest.mark.slow
@needs_llamacpp
def test_gguf_generation_is_greedy_on_its_own_logits_and_ignores_left_padding(embedded_source):
    """lm-eval's generate_until on a GGUF decodes with llama.cpp: the tokens are the argmax of the
    engine's own logits step by step, left padding (HFLM pads batches on the left) changes nothing,
    and a stop string ends the continuation."""
    import torch
    from transformers import AutoTokenizer

    from evals.llamacpp_eval import LlamaCppScorer
    from pipelines.llamacpp.convert import f16_gguf

    tok = AutoTokenizer.from_pretrained(embedded_source)
    scorer = LlamaCppScorer(f16_gguf(embedded_source), n_ctx=128, label="gguf:F16")
    prompt = tok("Question: What is 3 plus 4?\nAnswer:", add_special_tokens=False)["input_ids"]
    kwargs = dict(max_new_tokens=6, stop=[], eos_token_id=tok.eos_token_id, pad_token_id=0, decode=tok.decode)
    plain = scorer.generate(torch.tensor([prompt]), None, **kwargs)[0].tolist()

    ids = list(prompt)  # the same greedy decode, through the logits path the perplexity uses
    for _ in range(6):
        ids.append(int(scorer.logits(torch.tensor([ids]))[0, -1].argmax()))
        if ids[-1] == tok.eos_token_id:
            break
    assert plain == ids

    padded = torch.tensor([[0, 0, 0, *prompt]])
    mask = torch.tensor([[0, 0, 0, *[1] * len(prompt)]])
    assert scorer.generate(padded, mask, **kwargs)[0].tolist()[3:] == plain

    first_word = tok.decode(plain[len(prompt):len(prompt) + 1])
    stopped = scorer.generate(torch.tensor([prompt]), None, **{**kwargs, "stop": [first_word]})[0].tolist()
    assert stopped == plain[:len(prompt) + 1]
    scorer.close()
