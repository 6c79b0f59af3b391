"""Distribution fidelity: KL and top-1 agreement against an independent full-vocabulary computation.

The fast tests use the tiny Llama against a perturbed copy of itself; the slow one loads the
embedded model's baseline and its int8 checkpoint side by side, and also runs the evaluate
stage in both orders (scheme first, then baseline) through the shared reference cache.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.data import perplexity_text
from evals.fidelity import FidelityAccumulator, FidelityError, Reference, ReferenceRecorder
from evals.perplexity import compute_perplexity

SEQ, WINDOWS = 64, 3


def _full_kl(base, other, ids):
    """Independent per-token KL both ways, in float64, over every vocabulary entry (top-1 tie-aware).

    One window per forward, as qeval is run here (batch_size=1): a dynamically quantized
    scheme's activation scales, and bf16 matmuls, depend on what shares the batch.
    """
    with torch.inference_mode():
        p = torch.log_softmax(torch.cat([base(w[None]).logits[:, :-1] for w in ids]).double(), -1)
        q = torch.log_softmax(torch.cat([other(w[None]).logits[:, :-1] for w in ids]).double(), -1)
    pq = (p.exp() * (p - q)).sum(-1).flatten()
    qp = (q.exp() * (q - p)).sum(-1).flatten()
    agree = (q.gather(-1, p.argmax(-1, keepdim=True))[..., 0] >= q.max(-1).values).double().flatten()
    return pq, qp, agree


def _qeval_kl(base, other, tok, text, k):
    kwargs = dict(dataset="wikitext2", seq_len=SEQ, max_windows=WINDOWS, batch_size=1, show_progress=False)
    recorder = ReferenceRecorder(k)
    compute_perplexity(base, tok, text, observer=recorder, **kwargs)
    ref = Reference.from_bytes(recorder.reference.to_bytes())  # through the stored form
    acc = FidelityAccumulator(ref)
    compute_perplexity(other, tok, text, observer=acc, **kwargs)
    return ref, acc


@pytest.fixture(scope="module")
def tiny_pair(tiny_llama_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    other = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1 * p.abs().mean())
    return base, other, AutoTokenizer.from_pretrained(tiny_llama_dir)


def _windows(tok, text):
    ids = tok(text[:20000], return_tensors="pt").input_ids[0]
    return torch.stack([ids[i * SEQ:(i + 1) * SEQ] for i in range(WINDOWS)])


def test_full_rows_give_the_exact_kl_and_top_k_a_lower_bound(tiny_pair, data_dir):
    base, other, tok = tiny_pair
    text, _ = perplexity_text("wikitext2", data_dir)
    pq, qp, agree = _full_kl(base, other, _windows(tok, text))
    _, exact = _qeval_kl(base, other, tok, text, None)
    s = exact.summary()
    assert s["kl_base_scheme"]["mean"] == pytest.approx(pq.mean().item(), rel=1e-3)
    assert s["kl_scheme_base"]["mean"] == pytest.approx(qp.mean().item(), rel=1e-3)
    assert s["kl_base_scheme"]["p99"] == pytest.approx(np.percentile(pq.numpy(), 99), rel=1e-3)
    assert s["top1_agreement"] == pytest.approx(agree.mean().item())
    assert s["kl_base_scheme"]["mean"] > 1e-4 and s["n_tokens"] == WINDOWS * (SEQ - 1)
    _, top = _qeval_kl(base, other, tok, text, 8)
    t = top.summary()
    # data-processing inequality: token by token, the bucketed KL never exceeds the full one
    assert (top.token_kl() <= exact.token_kl() * (1 + 1e-4) + 1e-7).all()
    assert t["kl_base_scheme"]["mean"] > 0  # a random tiny Llama's flat rows put little mass in a top-8
    assert t["top1_agreement"] == pytest.approx(s["top1_agreement"])  # exact in both storages
    assert t["delta_nll_mean"] == pytest.approx(s["delta_nll_mean"], rel=1e-5)


def test_identical_models_have_zero_kl_and_full_agreement(tiny_pair, data_dir):
    base, _, tok = tiny_pair
    text, _ = perplexity_text("wikitext2", data_dir)
    _, acc = _qeval_kl(base, base, tok, text, 16)
    s = acc.summary()
    assert s["kl_base_scheme"]["max"] < 1e-6 and s["top1_agreement"] == 1.0 and s["top_k_overlap"] == 1.0


def test_other_token_ids_are_refused(tiny_pair, data_dir):
    base, other, tok = tiny_pair
    text, _ = perplexity_text("wikitext2", data_dir)
    recorder = ReferenceRecorder(8)
    compute_perplexity(base, tok, text, dataset="w", seq_len=SEQ, max_windows=2, show_progress=False,
                       observer=recorder)
    with pytest.raises(FidelityError, match="token ids differ"):
        compute_perplexity(other, tok, text[5000:], dataset="w", seq_len=SEQ, max_windows=2, show_progress=False,
                           observer=FidelityAccumulator(recorder.reference))


@pytest.fixture(scope="module")
def embedded_runs(tmp_path_factory):
    """The embedded model's baseline and int8 checkpoints, written by the real quantize stage."""
    from pipelines.execution.local import run_stages_in_process
    from pipelines.execution.plan import SweepOptions, plan, write_plan

    runs = tmp_path_factory.mktemp("runs")
    os.environ["QEVAL_RUNS_DIR"] = str(runs)
    overrides = {"perplexity": {"datasets": ["wikitext2"], "seq_len": SEQ, "max_windows": WINDOWS, "batch_size": 1,
                                "fidelity": {"top_k": 32}}}
    opts = SweepOptions(model="smollm2-135m", schemes=["baseline", "int8"], suite="smoke", tasks=[],
                        overrides=overrides, quiet=True)
    p = plan(opts)
    write_plan(p, opts)
    for s in ("baseline", "int8"):
        assert run_stages_in_process(p.model, s, ("quantize",), quiet=True) == 0
    yield p.model
    os.environ.pop("QEVAL_RUNS_DIR", None)


@pytest.mark.slow
def test_embedded_int8_kl_matches_a_full_vocabulary_computation(embedded_runs, data_dir):
    from evals.results import FidelityFile, PerplexityFile, QuantizeResult
    from pipelines.execution.local import run_stages_in_process
    from pipelines.quantizers import get_quantizer
    from pipelines.rundir import scheme_dir

    model = embedded_runs
    infos = {s: QuantizeResult.read(scheme_dir(model, s).quantize_json) for s in ("baseline", "int8")}
    base = get_quantizer("baseline").load(infos["baseline"].checkpoint, "cpu", "bfloat16")
    int8 = get_quantizer(infos["int8"].quantizer).load(infos["int8"].checkpoint, "cpu", "bfloat16")
    tok = AutoTokenizer.from_pretrained(infos["baseline"].checkpoint)
    text, _ = perplexity_text("wikitext2", data_dir)
    pq, qp, agree = _full_kl(base, int8, _windows(tok, text))
    _, exact = _qeval_kl(base, int8, tok, text, None)  # full rows: vocab 49,152, 189 tokens (37 MB)
    s = exact.summary()
    assert s["kl_base_scheme"]["mean"] == pytest.approx(pq.mean().item(), rel=1e-3)
    assert s["kl_scheme_base"]["mean"] == pytest.approx(qp.mean().item(), rel=1e-3)
    assert s["top1_agreement"] == pytest.approx(agree.mean().item())
    del base, int8

    # The evaluate stage, scheme before baseline: int8 records the reference from the base
    # model, the baseline then finds it (its own KL is zero) and neither records it twice.
    for scheme in ("int8", "baseline"):
        assert run_stages_in_process(model, scheme, ("evaluate",), quiet=True) == 0
    fid = {s: FidelityFile.read(scheme_dir(model, s).eval_dir / FidelityFile.FILE) for s in ("int8", "baseline")}
    staged = fid["int8"].datasets["wikitext2"]
    assert fid["int8"].bound == "lower" and "LOWER BOUND" in fid["int8"].method
    # the stage's top-32 bound sits below the exact value and close to it on this model
    assert pq.mean().item() * 0.5 < staged["kl_base_scheme"]["mean"] <= pq.mean().item() * (1 + 1e-3)
    assert staged["top1_agreement"] == pytest.approx(agree.mean().item())
    assert fid["baseline"].datasets["wikitext2"]["kl_base_scheme"]["max"] < 1e-6
    floor = fid["int8"].noise_floor["wikitext2"]
    assert "float32" in floor["comparison"] and 0 < floor["kl_base_scheme"]["mean"] < staged["kl_base_scheme"]["mean"]
    assert fid["baseline"].reference["keys"] == fid["int8"].reference["keys"]
    ppl = PerplexityFile.read(scheme_dir(model, "int8").eval_dir / PerplexityFile.FILE).datasets["wikitext2"]
    assert fid["int8"].reference["targets_sha256"]["wikitext2"] == ppl.token_ids_sha256
    print(f"\nint8 vs baseline, {WINDOWS}x{SEQ} windows: exact KL {pq.mean().item():.5f}, top-32 bound "
          f"{staged['kl_base_scheme']['mean']:.5f}, floor {floor['kl_base_scheme']['mean']:.5f}")


def test_kl_and_top1_gates_decide_on_window_intervals(tiny_pair, data_dir):
    from evals.results import FidelityFile
    from pipelines.signoff.evidence import SchemeEvidence
    from pipelines.signoff.fidelity_gates import fidelity_gates
    from pipelines.signoff.gates import merge_gates

    base, other, tok = tiny_pair
    text, _ = perplexity_text("wikitext2", data_dir)
    _, acc = _qeval_kl(base, other, tok, text, 16)
    _, same = _qeval_kl(base, base, tok, text, 16)
    floor = {k: v for k, v in same.summary().items() if not k.startswith("window_")}
    floor["kl_base_scheme"] = {**floor["kl_base_scheme"], "mean": acc.summary()["kl_base_scheme"]["mean"] / 4}
    fid = FidelityFile(method="m", bound="lower", reference={}, datasets={"wikitext2": acc.summary()},
                       noise_floor={"wikitext2": floor}, token_kl_file=None)
    ev = SchemeEvidence(scheme="noisy", fidelity=fid, token_kl={"wikitext2": acc.token_kl()})
    mean = acc.summary()["kl_base_scheme"]["mean"]

    def decide(**gates):
        return {g.gate: g for g in fidelity_gates(SchemeEvidence(scheme="baseline"), ev,
                                                  merge_gates({**gates, "n_resamples": 300}, None))}

    loose = decide(kl_max_mean=10 * mean, kl_max_p99=100.0, top1_min_agreement=0.01)
    assert {g.verdict for g in loose.values()} == {"PASS"}
    tight = decide(kl_max_mean=mean / 10, top1_min_agreement=1.0)
    assert tight["kl_max_mean[wikitext2]"].verdict == "FAIL"
    assert tight["top1_min_agreement[wikitext2]"].verdict in ("FAIL", "INCONCLUSIVE")
    # {floor_x: 2}: twice a floor a quarter of the scheme's KL -> the scheme is over it
    floored = decide(kl_max_mean={"floor_x": 2})["kl_max_mean[wikitext2]"]
    assert floored.threshold == pytest.approx(mean / 2) and floored.verdict == "FAIL" and "noise floor" in floored.note
    ci = loose["kl_max_mean[wikitext2]"].ci
    assert ci[0] <= mean <= ci[1]
