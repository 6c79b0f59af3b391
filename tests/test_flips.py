"""Answer flips against the baseline: counts, exact McNemar test, detectable effect, and the gate."""

from __future__ import annotations

import math

import pytest

from evals.flips import count_flips, mcnemar_exact_p, mde_points
from pipelines.signoff.evidence import SchemeEvidence
from pipelines.signoff.fidelity_gates import flip_gates, task_flips
from pipelines.signoff.gates import merge_gates


def test_mcnemar_exact_matches_the_binomial_tail():
    # 10 one way, 2 the other: 2 * P(X <= 2), X ~ Binomial(12, 1/2)
    assert mcnemar_exact_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact_p(3, 3) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    scipy = pytest.importorskip("scipy.stats")
    assert mcnemar_exact_p(17, 6) == pytest.approx(scipy.binomtest(6, 23, 0.5).pvalue)


def test_minimum_detectable_effect_at_fifty_examples_is_fourteen_points():
    assert round(mde_points(50)) == 14
    assert mde_points(200) == pytest.approx(mde_points(50) / 2)


def test_flips_hide_behind_an_unchanged_accuracy():
    base = {i: float(i < 30) for i in range(50)}  # 30 right
    scheme = {i: float(10 <= i < 40) for i in range(50)}  # 30 right, 20 of them flipped
    f = count_flips("t", "acc", base, scheme)
    assert (f.correct_to_wrong, f.wrong_to_correct, f.n) == (10, 10, 50)
    assert f.flip_rate == 0.4 and f.net_change == 0.0 and f.mcnemar_p == 1.0
    assert f.net_ci[0] < 0 < f.net_ci[1] and f.flip_rate_ci[0] < 0.4 < f.flip_rate_ci[1]
    assert f.baseline_accuracy == f.scheme_accuracy == 0.6


def _evidence(name, scores):
    return SchemeEvidence(scheme=name, task_samples={"arc_easy": [{"doc_id": i, "acc": a} for i, a in scores.items()]})


def test_flip_gate_fails_a_scheme_that_flips_many_answers_at_equal_accuracy():
    gates = merge_gates({"flip_max_rate": 0.1, "n_resamples": 500}, None)
    base = _evidence("baseline", {i: float(i < 60) for i in range(100)})
    churn = _evidence("churn", {i: float(20 <= i < 80) for i in range(100)})  # 40% flipped, same accuracy
    steady = _evidence("steady", {i: float(i < 60) for i in range(100)})
    [bad] = flip_gates(base, churn, gates)
    [good] = flip_gates(base, steady, gates)
    assert bad.verdict == "FAIL" and bad.value == pytest.approx(0.4) and "20 correct→wrong" in bad.note
    assert good.verdict == "PASS" and good.value == 0.0
    assert math.isclose(task_flips(base, churn, gates)["arc_easy"].mcnemar_p, 1.0)


def test_flip_gate_is_inconclusive_without_the_schemes_samples():
    gates = merge_gates({"flip_max_rate": 0.1}, None)
    [g] = flip_gates(_evidence("baseline", {0: 1.0}), SchemeEvidence(scheme="x"), gates)
    assert g.verdict == "INCONCLUSIVE" and "no paired" in g.note


def test_report_shows_flips_beside_accuracy_and_the_detectable_change():
    from pipelines.signoff.fidelity_gates import fidelity_summary
    from pipelines.signoff.report import render_html, render_markdown
    from pipelines.signoff.verdict import signoff as judge

    gates = merge_gates({"flip_max_rate": 0.1, "n_resamples": 300}, None)
    base = _evidence("baseline", {i: float(i < 30) for i in range(50)})
    churn = _evidence("churn", {i: float(10 <= i < 40) for i in range(50)})
    result = judge(base, [churn], gates)
    result["fidelity"] = fidelity_summary(base, [base, churn], gates)
    context = {"model": "m", "suite": "quick", "protocols": {}, "caveats": []}
    md = render_markdown(result, context)
    assert "## Flips on tasks" in md and "| churn | arc_easy | 60.0 | 60.0 | 10 | 10 | 40.0% |" in md
    assert "arc_easy: 13.9 points" in md  # 50 examples: a change under ~14 points is noise
    assert "flip_max_rate[arc_easy]" in md
    page = render_html(result, context, None)
    assert "<h2>Flips on tasks</h2>" in page and "McNemar" in page
