"""Gate configuration and per-scheme verdicts on constructed evidence with known answers.

These are the gates' arithmetic: evidence is built in memory. Reading evidence from the
files the stages write is tested on real run directories in test_signoff_stage.py.
"""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
from pydantic import ValidationError

from pipelines.errors import QevalError
from pipelines.signoff import evidence, gates, outcome, verdict

# One namespace for the sign-off's public names, as the tests used before the split.
g = types.SimpleNamespace(
    Gates=gates.Gates, BatchThreshold=gates.BatchThreshold, merge_gates=gates.merge_gates,
    SchemeEvidence=evidence.SchemeEvidence, PerplexityEvidence=evidence.PerplexityEvidence,
    GateResult=outcome.GateResult, SchemeVerdict=verdict.SchemeVerdict,
    evaluate_scheme=verdict.evaluate_scheme, signoff=verdict.signoff, exit_code=verdict.exit_code,
    PASS=outcome.PASS, FAIL=outcome.FAIL, INCONCLUSIVE=outcome.INCONCLUSIVE, SKIPPED=outcome.SKIPPED,
    BASELINE=outcome.BASELINE, NOT_JUDGED=outcome.NOT_JUDGED,
)


def _rows(scores, *, with_norm: bool = True, ids=None) -> list[dict]:
    ids = range(len(scores)) if ids is None else ids
    rows = []
    for doc_id, score in zip(ids, scores, strict=True):
        row = {"doc_id": doc_id, "acc": int(score)}
        if with_norm:
            row["acc_norm"] = int(score)
        rows.append(row)
    return rows


def _accuracy(n: int, p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(int)


def _worse(scores: np.ndarray, lost: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = scores.copy()
    out[rng.choice(np.flatnonzero(scores == 1), size=lost, replace=False)] = 0
    return out


BASE_ARC = _accuracy(600, 0.7, seed=1)
BASE_PIQA = _accuracy(400, 0.65, seed=2)
BASE_NLL = np.random.default_rng(3).normal(3.0, 0.4, 120)
# Large enough that identical answers support recovery above 0.997 (the interval
# of a paired bootstrap never has zero width: see evals.stats).
BIG_ARC = _accuracy(20_000, 0.7, seed=4)
BIG_PIQA = _accuracy(20_000, 0.65, seed=5)


def _ppl_entry(nll: np.ndarray) -> evidence.PerplexityEvidence:
    return g.PerplexityEvidence(
        window_nll=nll.tolist(), ppl=float(np.exp(nll.mean())), seq_len=512, protocol="gptq", token_ids_sha256="abc"
    )


def _evidence(name, arc, piqa, nll, **cost) -> g.SchemeEvidence:
    return g.SchemeEvidence(
        scheme=name,
        perplexity={"wikitext2": _ppl_entry(nll)},
        task_samples={"arc_easy": _rows(arc), "piqa": _rows(piqa)},
        task_metrics={
            "arc_easy": {"acc": float(np.mean(arc))},
            "piqa": {"acc": float(np.mean(piqa))},
        },
        **cost,
    )


@pytest.fixture
def baseline() -> g.SchemeEvidence:
    return _evidence(
        "baseline",
        BASE_ARC,
        BASE_PIQA,
        BASE_NLL,
        weights_gib=0.25,
        decode_tok_s={1: 40.0},
        ttft_ms_p99={1: 90.0},
    )


def _by_gate(verdict: g.SchemeVerdict) -> dict[str, g.GateResult]:
    return {r.gate: r for r in verdict.gates}


def test_identical_scheme_passes_every_gate():
    baseline = _evidence("baseline", BIG_ARC, BIG_PIQA, BASE_NLL)
    twin = _evidence("twin", BIG_ARC, BIG_PIQA, BASE_NLL)
    verdict = g.evaluate_scheme(baseline, twin, g.Gates())
    assert verdict.verdict == g.PASS
    assert set(_by_gate(verdict)) == {
        "ppl_max_rel_increase[wikitext2]",
        "acc_min_recovery[arc_easy]",
        "acc_min_recovery[piqa]",
        "acc_min_recovery_avg",
    }
    assert all(r.verdict == g.PASS and r.n_needed is None for r in verdict.gates)
    lo, hi = _by_gate(verdict)["acc_min_recovery[arc_easy]"].ci
    assert 0.99 <= lo < 1.0 < hi


def test_clearly_worse_scheme_fails(baseline):
    bad = _evidence("bad", _worse(BASE_ARC, 150), _worse(BASE_PIQA, 60), BASE_NLL + 0.2)
    verdict = g.evaluate_scheme(baseline, bad, g.Gates(acc_max_drop_points=1.0))
    assert verdict.verdict == g.FAIL
    results = _by_gate(verdict)
    assert {r.verdict for r in results.values()} == {g.FAIL}
    ppl = results["ppl_max_rel_increase[wikitext2]"]
    assert ppl.estimate == pytest.approx(np.expm1(0.2)) and ppl.ci[0] > 0.03
    assert ppl.delta == pytest.approx(ppl.value - ppl.baseline)
    drop = results["acc_max_drop_points[arc_easy]"]
    assert drop.estimate == pytest.approx(100 * 150 / 600)  # 150 of 600 answers lost = 25 points
    assert drop.ci[0] <= drop.estimate <= drop.ci[1]


def test_small_margin_is_inconclusive_and_estimates_samples_needed(baseline):
    # One arc_easy answer in 600 lost: the recovery is 0.9976, just above the 0.997 threshold.
    near = _evidence("near", _worse(BASE_ARC, 1), BASE_PIQA, BASE_NLL)
    gates = g.Gates(acc_min_recovery=0.997, acc_min_recovery_avg=None, ppl_max_rel_increase=None)
    result = _by_gate(g.evaluate_scheme(baseline, near, gates))["acc_min_recovery[arc_easy]"]
    assert result.verdict == g.INCONCLUSIVE
    assert result.ci[0] < 0.997 < result.ci[1]
    assert result.n == 600 and result.n_needed > 600


def test_samples_needed_grows_as_threshold_approaches_estimate(baseline):
    scheme = _evidence(
        "s", _worse(BASE_ARC, 6), BASE_PIQA, BASE_NLL
    )  # a one-point drop on arc_easy
    needed = []
    for threshold in (1.8, 1.4, 1.2):
        gates = g.Gates(
            acc_min_recovery=None,
            acc_min_recovery_avg=None,
            ppl_max_rel_increase=None,
            acc_max_drop_points=threshold,
        )
        result = _by_gate(g.evaluate_scheme(baseline, scheme, gates))[
            "acc_max_drop_points[arc_easy]"
        ]
        assert result.verdict == g.INCONCLUSIVE
        needed.append(result.n_needed)
    assert needed[0] < needed[1] < needed[2]


def test_verdicts_are_reproducible_with_the_seed(baseline):
    scheme = _evidence("s", _worse(BASE_ARC, 10), _worse(BASE_PIQA, 5), BASE_NLL + 0.01)
    first = g.evaluate_scheme(baseline, scheme, g.Gates(seed=7))
    again = g.evaluate_scheme(baseline, scheme, g.Gates(seed=7))
    assert first == again


def test_perplexity_gate_uses_paired_window_bootstrap(baseline):
    rng = np.random.default_rng(4)
    scheme = _evidence(
        "s", BASE_ARC, BASE_PIQA, BASE_NLL + 0.01 + rng.normal(0, 0.003, BASE_NLL.size)
    )
    result = _by_gate(g.evaluate_scheme(baseline, scheme, g.Gates()))[
        "ppl_max_rel_increase[wikitext2]"
    ]
    assert result.verdict == g.PASS and result.n == 120
    assert 0.005 < result.ci[0] < result.estimate < result.ci[1] < 0.015


def test_perplexity_windows_that_differ_cannot_be_paired(baseline):
    scheme = _evidence("s", BASE_ARC, BASE_PIQA, BASE_NLL)
    scheme.perplexity["wikitext2"] = dataclasses.replace(scheme.perplexity["wikitext2"], token_ids_sha256="other")
    with pytest.raises(QevalError, match="token_ids_sha256"):
        g.evaluate_scheme(baseline, scheme, g.Gates())


def test_missing_window_nll_is_inconclusive_not_pass(baseline):
    scheme = _evidence("s", BASE_ARC, BASE_PIQA, BASE_NLL)
    scheme.perplexity["wikitext2"] = dataclasses.replace(scheme.perplexity["wikitext2"], window_nll=[])
    verdict = g.evaluate_scheme(baseline, scheme, g.Gates())
    result = _by_gate(verdict)["ppl_max_rel_increase[wikitext2]"]
    assert result.verdict == g.INCONCLUSIVE and "window_nll" in result.note
    assert verdict.verdict == g.INCONCLUSIVE


def test_mismatched_doc_ids_pair_common_examples_with_a_note(baseline):
    scheme = _evidence("s", BASE_ARC, BASE_PIQA, BASE_NLL)
    scheme.task_samples["arc_easy"] = scheme.task_samples["arc_easy"][:500]
    result = _by_gate(g.evaluate_scheme(baseline, scheme, g.Gates()))["acc_min_recovery[arc_easy]"]
    assert result.n == 500
    assert "paired 500 common examples of 600 (baseline) and 500 (s)" in result.note


def test_no_common_doc_ids_is_a_clear_error(baseline):
    scheme = _evidence("s", BASE_ARC, BASE_PIQA, BASE_NLL)
    scheme.task_samples["piqa"] = _rows(BASE_PIQA, ids=range(10_000, 10_400))
    with pytest.raises(QevalError, match="piqa.*share no doc_id"):
        g.evaluate_scheme(baseline, scheme, g.Gates())


def test_acc_norm_falls_back_to_acc_where_a_task_lacks_it(baseline):
    baseline.task_samples["lambada_openai"] = _rows(BASE_PIQA, with_norm=False)
    scheme = _evidence("s", BASE_ARC, BASE_PIQA, BASE_NLL)
    scheme.task_samples["lambada_openai"] = _rows(BASE_PIQA, with_norm=False)
    results = _by_gate(g.evaluate_scheme(baseline, scheme, g.Gates(acc_metric="acc_norm")))
    assert results["acc_min_recovery[lambada_openai]"].metric == "acc.lambada_openai"
    assert "no acc_norm" in results["acc_min_recovery[lambada_openai]"].note
    assert results["acc_min_recovery[arc_easy]"].metric == "acc_norm.arc_easy"


def test_task_missing_for_the_scheme_is_inconclusive(baseline):
    scheme = _evidence("s", BASE_ARC, BASE_PIQA, BASE_NLL)
    del scheme.task_samples["piqa"]
    verdict = g.evaluate_scheme(baseline, scheme, g.Gates())
    results = _by_gate(verdict)
    assert results["acc_min_recovery[piqa]"].verdict == g.INCONCLUSIVE
    assert results["acc_min_recovery_avg"].verdict == g.INCONCLUSIVE
    assert verdict.verdict == g.INCONCLUSIVE


COST_GATES = {
    "max_weights_gib": 0.2,
    "min_decode_tok_s": {"bs": 1, "value": 30},
    "max_ttft_ms_p99": {"bs": 1, "value": 200},
}


def test_cost_gates_skip_when_numbers_are_not_representative():
    baseline = _evidence("baseline", BIG_ARC, BIG_PIQA, BASE_NLL)
    scheme = _evidence(
        "ct",
        BIG_ARC,
        BIG_PIQA,
        BASE_NLL,
        weights_gib=0.5,
        decode_tok_s={1: 2.0},
        ttft_ms_p99={1: 900.0},
        cost_representative=False,
        cost_note="compressed-tensors decompressed on CPU",
    )
    verdict = g.evaluate_scheme(baseline, scheme, g.Gates(**COST_GATES))
    results = _by_gate(verdict)
    cost = [
        results["max_weights_gib"],
        results["min_decode_tok_s[bs1]"],
        results["max_ttft_ms_p99[bs1]"],
    ]
    assert [r.verdict for r in cost] == [g.SKIPPED] * 3
    assert all("decompressed on CPU" in r.note for r in cost)
    assert verdict.verdict == g.PASS  # quality gates pass; skipped gates neither pass nor fail it


def test_cost_gates_compare_deterministically_when_representative(baseline):
    scheme = _evidence(
        "w4",
        BASE_ARC,
        BASE_PIQA,
        BASE_NLL,
        weights_gib=0.1,
        decode_tok_s={1: 25.0},
        ttft_ms_p99={1: 150.0},
    )
    verdict = g.evaluate_scheme(baseline, scheme, g.Gates(**COST_GATES))
    results = _by_gate(verdict)
    assert results["max_weights_gib"].verdict == g.PASS
    assert results["min_decode_tok_s[bs1]"].verdict == g.FAIL  # 25 < 30 tok/s
    assert results["min_decode_tok_s[bs1]"].delta == pytest.approx(-15.0)
    assert results["max_ttft_ms_p99[bs1]"].verdict == g.PASS
    assert results["max_ttft_ms_p99[bs1]"].ci is None
    assert verdict.verdict == g.FAIL


def test_cost_measurement_missing_at_the_gated_batch_size_is_inconclusive(baseline):
    scheme = _evidence(
        "w4", BASE_ARC, BASE_PIQA, BASE_NLL, weights_gib=0.1, decode_tok_s={8: 100.0}
    )
    result = _by_gate(
        g.evaluate_scheme(baseline, scheme, g.Gates(min_decode_tok_s={"bs": 1, "value": 30}))
    )
    assert result["min_decode_tok_s[bs1]"].verdict == g.INCONCLUSIVE


def test_all_gates_skipped_is_not_a_pass(baseline):
    scheme = _evidence("ct", BASE_ARC, BASE_PIQA, BASE_NLL, cost_representative=False)
    gates = g.Gates(
        ppl_max_rel_increase=None,
        acc_min_recovery=None,
        acc_min_recovery_avg=None,
        max_weights_gib=1.0,
    )
    verdict = g.evaluate_scheme(baseline, scheme, gates)
    assert verdict.verdict == g.INCONCLUSIVE and "no applicable gate" in verdict.note


def test_baseline_is_not_gated(baseline):
    verdict = g.evaluate_scheme(baseline, baseline, g.Gates())
    assert verdict.verdict == g.BASELINE and verdict.gates == ()


def test_exit_codes_incomplete_beats_fail_beats_inconclusive_beats_pass():
    assert g.exit_code([g.PASS, g.PASS]) == 0
    assert g.exit_code([g.PASS, g.FAIL, g.INCONCLUSIVE]) == 1
    assert g.exit_code([g.PASS, g.INCONCLUSIVE]) == 3
    assert g.exit_code([g.PASS, g.FAIL, g.INCONCLUSIVE, g.NOT_JUDGED]) == 4
    assert g.exit_code([]) == 0


def test_a_not_judged_scheme_makes_the_signoff_incomplete_even_beside_a_fail():
    baseline = _evidence("baseline", BIG_ARC, BIG_PIQA, BASE_NLL)
    bad = _evidence("bad", _worse(BIG_ARC, 3000), BIG_PIQA, BASE_NLL)
    report = g.signoff(baseline, [bad], g.Gates(), not_judged={"gptq": "benchmark: failed: OOM"},
                       order=["gptq", "bad"])
    assert report["verdicts"] == {"baseline": "BASELINE", "gptq": "NOT JUDGED", "bad": "FAIL"}
    assert (report["overall"], report["exit_code"]) == ("INCOMPLETE", 4)
    assert report["not_judged"] == {"gptq": "benchmark: failed: OOM"}
    entry = report["schemes"][1]
    assert (entry["scheme"], entry["verdict"], entry["note"], entry["gates"]) == (
        "gptq", "NOT JUDGED", "benchmark: failed: OOM", [])
    assert "incomplete (4) > fail (1)" in report["exit_code_precedence"]


def test_without_a_judgeable_baseline_nothing_is_judged():
    report = g.signoff(None, [], g.Gates(), not_judged={"baseline": "evaluate: stale", "nf4": "the baseline is NOT JUDGED"})
    assert report["verdicts"] == {"baseline": "NOT JUDGED", "nf4": "NOT JUDGED"}
    assert report["exit_code"] == 4


def test_signoff_is_json_with_verdicts_per_scheme_and_overall():
    baseline = _evidence("baseline", BIG_ARC, BIG_PIQA, BASE_NLL)
    twin = _evidence("twin", BIG_ARC, BIG_PIQA, BASE_NLL)
    near = _evidence("near", _worse(BIG_ARC, 42), BIG_PIQA, BASE_NLL)  # arc recovery 0.997
    bad = _evidence("bad", _worse(BIG_ARC, 3000), BIG_PIQA, BASE_NLL)
    gates = g.Gates(acc_min_recovery=0.997)
    report = g.signoff(baseline, [baseline, twin, near], gates)
    assert report["verdicts"] == {"baseline": "BASELINE", "twin": "PASS", "near": "INCONCLUSIVE"}
    assert (report["overall"], report["exit_code"]) == ("INCONCLUSIVE", 3)
    assert (report["seed"], report["n_resamples"], report["confidence"]) == (0, 2000, 0.95)
    gate = report["schemes"][2]["gates"][0]
    assert set(gate) >= {
        "gate",
        "metric",
        "baseline",
        "value",
        "delta",
        "ci",
        "threshold",
        "verdict",
        "n",
        "n_needed",
        "note",
    }
    json.dumps(report, allow_nan=False)

    with_bad = g.signoff(baseline, [twin, near, bad], gates)
    assert (with_bad["overall"], with_bad["exit_code"]) == ("FAIL", 1)
    assert g.signoff(baseline, [twin], gates)["exit_code"] == 0


def test_a_baseline_alone_has_nothing_to_sign_off_and_exits_0(baseline):
    r = g.signoff(baseline, [baseline], g.Gates())
    assert (r["overall"], r["exit_code"]) == ("NOTHING TO SIGN OFF", 0)


# --- configuration ----------------------------------------------------------------------------


def test_gates_reject_an_unknown_key_naming_it():
    with pytest.raises(ValidationError, match="ppl_max_rel_incr"):
        g.Gates.model_validate({"ppl_max_rel_incr": 0.03})
    with pytest.raises(ValidationError, match="valu"):
        g.Gates.model_validate({"min_decode_tok_s": {"bs": 1, "valu": 30}})


def test_merge_gates_names_unknown_keys_and_their_source():
    with pytest.raises(QevalError, match="suite.*acc_min_recovry"):
        g.merge_gates({"acc_min_recovry": 0.99}, {})
    with pytest.raises(QevalError, match="'confidance'.*model's gates override"):
        g.merge_gates({}, {"confidance": 0.9})
    with pytest.raises(QevalError, match="confidence"):
        g.merge_gates({}, {"confidence": 95})


def test_merge_gates_merges_mappings_and_null_disables():
    merged = g.merge_gates(
        {
            "ppl_max_rel_increase": {"wikitext2": 0.03, "c4": 0.03},
            "acc_min_recovery": 0.99,
            "min_decode_tok_s": {"bs": 1, "value": 30},
        },
        {
            "ppl_max_rel_increase": {"c4": 0.05, "wikitext2": None},
            "acc_min_recovery": None,
            "min_decode_tok_s": {"value": 50},
        },
    )
    assert merged.perplexity_thresholds(["wikitext2", "c4"]) == {"c4": 0.05}
    assert merged.acc_min_recovery is None
    assert merged.min_decode_tok_s == g.BatchThreshold(bs=1, value=50)
    assert merged.seed == 0 and merged.n_resamples == 2000 and merged.confidence == 0.95


def test_default_perplexity_threshold_covers_every_measured_dataset():
    assert g.Gates().perplexity_thresholds(["wikitext2", "c4"]) == {"c4": 0.03, "wikitext2": 0.03}


# --- cost gates relative to the baseline -----------------------------------

REL_GATES = {
    "ppl_max_rel_increase": None, "acc_min_recovery": None, "acc_min_recovery_avg": None,
    "max_weights_rel": 0.6, "min_decode_rel": {"bs": 1, "value": 1.0}, "max_ttft_rel": {"bs": 1, "value": 1.2},
}


def _costed(name, weights_gib, decode, ttft, **kwargs) -> evidence.SchemeEvidence:
    return g.SchemeEvidence(scheme=name, weights_gib=weights_gib, decode_tok_s={1: decode}, ttft_ms_p99={1: ttft},
                            cost_device=kwargs.pop("cost_device", "Test CPU"), **kwargs)


def test_relative_cost_gates_compare_the_ratio_to_the_baseline():
    baseline = _costed("baseline", 0.25, 40.0, 100.0)
    small_slow = _costed("w4", 0.1, 30.0, 110.0)  # 0.4x the weights, 0.75x the speed, 1.1x the TTFT
    results = _by_gate(g.evaluate_scheme(baseline, small_slow, g.Gates(**REL_GATES)))
    weights, decode, ttft = results["max_weights_rel"], results["min_decode_rel[bs1]"], results["max_ttft_rel[bs1]"]
    assert (weights.verdict, weights.estimate) == (g.PASS, pytest.approx(0.4))
    assert (decode.verdict, decode.estimate) == (g.FAIL, pytest.approx(0.75))
    assert (ttft.verdict, ttft.estimate) == (g.PASS, pytest.approx(1.1))
    assert decode.quantity == "ratio to baseline" and decode.threshold == 1.0
    assert (decode.baseline, decode.value, decode.delta) == (40.0, 30.0, -10.0)
    assert "0.75x the baseline, needs ≥ 1x" in decode.note  # the figure and the threshold, in words
    big = _costed("int8", 0.2, 41.0, 100.0)
    assert _by_gate(g.evaluate_scheme(baseline, big, g.Gates(**REL_GATES)))["max_weights_rel"].verdict == g.FAIL


def test_relative_cost_gates_need_a_representative_baseline_on_the_same_device():
    scheme = _costed("w4", 0.1, 50.0, 90.0)
    emulated_base = _costed("baseline", 0.25, 40.0, 100.0, cost_representative=False,
                            cost_note="measured on cuda (H100), the model's target device is cpu")
    results = _by_gate(g.evaluate_scheme(emulated_base, scheme, g.Gates(**REL_GATES)))
    assert {r.verdict for r in results.values()} == {g.SKIPPED}
    assert "baseline not representative: measured on cuda" in results["max_weights_rel"].note
    elsewhere = _costed("baseline", 0.25, 40.0, 100.0, cost_device="Other CPU")
    results = _by_gate(g.evaluate_scheme(elsewhere, scheme, g.Gates(**REL_GATES)))
    assert results["min_decode_rel[bs1]"].verdict == g.SKIPPED
    assert "baseline measured on Other CPU, w4 on Test CPU" in results["min_decode_rel[bs1]"].note


def test_relative_cost_gate_without_a_baseline_figure_is_inconclusive():
    baseline = g.SchemeEvidence(scheme="baseline", weights_gib=0.25, cost_device="Test CPU")
    scheme = _costed("w4", 0.1, 50.0, 90.0)
    results = _by_gate(g.evaluate_scheme(baseline, scheme, g.Gates(**REL_GATES)))
    assert results["max_weights_rel"].verdict == g.PASS
    assert results["min_decode_rel[bs1]"].verdict == g.INCONCLUSIVE
    assert "for the baseline" in results["min_decode_rel[bs1]"].note


def test_every_shipped_suite_judges_cost_relative_to_the_baseline():
    from pipelines.recipes import available, load_suite

    for name in available("suites"):
        merged = g.merge_gates(load_suite(name).gates, {})
        assert merged.max_weights_rel is not None, name
        assert merged.min_decode_rel is not None and merged.min_decode_rel.bs == 1, name


def test_a_model_overrides_a_relative_gate_keeping_the_suite_batch_size():
    merged = g.merge_gates({"min_decode_rel": {"bs": 1, "value": 1.0}, "max_weights_rel": 0.6},
                           {"min_decode_rel": {"value": 0.8}, "max_weights_rel": None})
    assert merged.min_decode_rel == g.BatchThreshold(bs=1, value=0.8) and merged.max_weights_rel is None


# --- examples needed, capped at the dataset's size -------------------------


def test_inconclusive_gate_beyond_the_dataset_says_it_cannot_be_settled(baseline):
    near = _evidence("near", _worse(BASE_ARC, 1), BASE_PIQA, BASE_NLL)  # recovery 0.9976 vs 0.997
    gates_ = g.Gates(acc_min_recovery=0.997, acc_min_recovery_avg=None, ppl_max_rel_increase=None)
    baseline.task_sizes["arc_easy"] = 800  # the whole task has 800 examples; 600 were scored
    result = _by_gate(g.evaluate_scheme(baseline, near, gates_))["acc_min_recovery[arc_easy]"]
    assert result.verdict == g.INCONCLUSIVE
    assert result.n_needed is None and result.n_available == 800
    assert result.note.startswith("cannot be settled with this dataset")
    baseline.task_sizes["arc_easy"] = 10**9
    result = _by_gate(g.evaluate_scheme(baseline, near, gates_))["acc_min_recovery[arc_easy]"]
    assert 600 < result.n_needed <= 10**9
