"""Paired bootstrap intervals and the interval-versus-threshold decision, on fixtures with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals import stats


def _scores(n: int, accuracy: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(n) < accuracy).astype(float)


def _flip_correct_to_wrong(scores: np.ndarray, count: int, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    correct = np.flatnonzero(scores == 1)
    worse = scores.copy()
    worse[rng.choice(correct, size=count, replace=False)] = 0
    return worse


def test_identical_scheme_passes_when_the_sample_supports_it():
    base = _scores(3000, 0.7)
    result = stats.paired_accuracy_bootstrap(base, base.copy())
    assert result.difference.estimate == 0.0 and result.recovery.estimate == 1.0
    assert result.difference.lo < 0 < result.difference.hi  # never a zero-width interval
    assert (
        stats.classify(result.recovery.lo, result.recovery.hi, 0.99, upper_bound=False)
        == stats.PASS
    )


def test_a_few_identical_answers_do_not_prove_recovery():
    # 20 matching answers: with no disagreement observed, a plain paired bootstrap
    # gives [1, 1] and a PASS; what 20 examples can support is far wider.
    base = _scores(20, 0.65)
    result = stats.paired_accuracy_bootstrap(base, base.copy())
    assert result.recovery.lo < 0.95
    assert (
        stats.classify(result.recovery.lo, result.recovery.hi, 0.95, upper_bound=False)
        == stats.INCONCLUSIVE
    )


def test_clearly_worse_scheme_fails():
    base = _scores(1000, 0.8)
    worse = _flip_correct_to_wrong(base, 200)  # recovery 0.75
    result = stats.paired_accuracy_bootstrap(base, worse)
    assert result.recovery.estimate == pytest.approx(worse.mean() / base.mean())
    assert result.recovery.hi < 0.99
    assert (
        stats.classify(result.recovery.lo, result.recovery.hi, 0.99, upper_bound=False)
        == stats.FAIL
    )


def test_tiny_sample_straddling_the_threshold_is_inconclusive():
    base = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1], dtype=float)
    scheme = base.copy()
    scheme[0] = 0  # one example lost: recovery 15/16
    result = stats.paired_accuracy_bootstrap(base, scheme)
    assert result.recovery.lo < 0.95 < result.recovery.hi
    verdict = stats.classify(result.recovery.lo, result.recovery.hi, 0.95, upper_bound=False)
    assert verdict == stats.INCONCLUSIVE
    needed = stats.samples_needed(
        result.recovery.n, result.recovery.estimate, result.recovery.lo, result.recovery.hi, 0.95
    )
    assert needed is not None and needed > 20


def test_bootstrap_half_width_matches_normal_theory_for_paired_differences():
    base = _scores(2000, 0.6, seed=3)
    rng = np.random.default_rng(4)
    scheme = np.where(rng.random(2000) < 0.1, 1 - base, base)  # 10% of answers change either way
    result = stats.paired_accuracy_bootstrap(base, scheme, n_resamples=4000)
    d = scheme - base
    normal_half_width = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert result.difference.half_width == pytest.approx(normal_half_width, rel=0.1)
    assert result.difference.lo < result.difference.estimate < result.difference.hi


def test_samples_needed_grows_as_the_margin_shrinks():
    assert stats.samples_needed(100, 0.0, -1.0, 1.0, 0.5) == 400
    assert stats.samples_needed(100, 0.0, -1.0, 1.0, 0.25) == 1600
    assert stats.samples_needed(100, 0.0, -1.0, 1.0, 0.0) is None

    base = _scores(200, 0.7, seed=5)
    scheme = _flip_correct_to_wrong(base, 2)  # a one-point drop
    drop = stats.paired_accuracy_bootstrap(base, scheme).difference
    needed = []
    for threshold in (-0.02, -0.015, -0.0125):  # 1, 0.5 and 0.25 points below the estimate
        assert stats.classify(drop.lo, drop.hi, threshold, upper_bound=False) == stats.INCONCLUSIVE
        needed.append(stats.samples_needed(drop.n, drop.estimate, drop.lo, drop.hi, threshold))
    assert needed[0] < needed[1] < needed[2]


def test_same_seed_reproduces_and_another_seed_differs():
    base = _scores(500, 0.6, seed=6)
    scheme = np.where(np.random.default_rng(7).random(500) < 0.2, 1 - base, base)
    first = stats.paired_accuracy_bootstrap(base, scheme, seed=11)
    again = stats.paired_accuracy_bootstrap(base, scheme, seed=11)
    other = stats.paired_accuracy_bootstrap(base, scheme, seed=12)
    assert first == again
    assert (first.recovery.lo, first.recovery.hi) != (other.recovery.lo, other.recovery.hi)
    assert first.recovery.seed == 11 and first.recovery.n_resamples == 2000


def test_perplexity_increase_is_paired_by_window():
    rng = np.random.default_rng(8)
    base_nll = rng.normal(3.0, 0.5, 150)  # windows differ a lot from each other...
    scheme_nll = (
        base_nll + 0.02 + rng.normal(0, 0.005, 150)
    )  # ...but the scheme tracks each window closely
    interval = stats.perplexity_increase_bootstrap(base_nll, scheme_nll)
    expected = math.exp(scheme_nll.mean()) / math.exp(base_nll.mean()) - 1
    assert interval.estimate == pytest.approx(expected)
    assert interval.lo < interval.estimate < interval.hi
    # Unpaired, the window spread (0.5 nats) would make the interval roughly +-8%;
    # paired, it is a small fraction of a percent around the 2% increase.
    assert interval.hi - interval.lo < 0.005
    assert stats.classify(interval.lo, interval.hi, 0.03, upper_bound=True) == stats.PASS
    assert stats.classify(interval.lo, interval.hi, 0.01, upper_bound=True) == stats.FAIL


def test_perplexity_constant_shift_gives_exact_increase():
    base_nll = np.linspace(2.5, 3.5, 40)
    interval = stats.perplexity_increase_bootstrap(base_nll, base_nll + 0.1)
    assert interval.estimate == pytest.approx(math.expm1(0.1))
    assert interval.lo == pytest.approx(math.expm1(0.1)) and interval.hi == pytest.approx(
        math.expm1(0.1)
    )


def test_average_recovery_bootstraps_tasks_jointly():
    task_a = _scores(400, 0.8, seed=9)
    task_b = _scores(100, 0.4, seed=10)
    same = stats.average_recovery_bootstrap([(task_a, task_a), (task_b, task_b)])
    assert (same.estimate, same.n) == (1.0, 500) and same.lo < 1.0 < same.hi

    worse_b = _flip_correct_to_wrong(task_b, 10)
    interval = stats.average_recovery_bootstrap([(task_a, task_a), (task_b, worse_b)])
    # Tasks weigh equally: the average is over task means, not over all examples.
    expected = (task_a.mean() + worse_b.mean()) / (task_a.mean() + task_b.mean())
    assert interval.estimate == pytest.approx(expected)
    assert interval.lo < interval.estimate < interval.hi < 1.0


def test_classify_boundaries_count_as_safe():
    assert stats.classify(0.0, 0.03, 0.03, upper_bound=True) == stats.PASS
    assert stats.classify(0.031, 0.05, 0.03, upper_bound=True) == stats.FAIL
    assert stats.classify(0.99, 1.0, 0.99, upper_bound=False) == stats.PASS
    assert stats.classify(0.9, 0.98, 0.99, upper_bound=False) == stats.FAIL
    assert stats.classify(0.98, 1.0, 0.99, upper_bound=False) == stats.INCONCLUSIVE


def test_recovery_when_the_baseline_scores_nothing():
    zeros = np.zeros(10)
    assert stats.paired_accuracy_bootstrap(zeros, zeros).recovery.estimate == 1.0
    ones_somewhere = zeros.copy()
    ones_somewhere[3] = 1
    assert math.isinf(stats.paired_accuracy_bootstrap(zeros, ones_somewhere).recovery.estimate)


@pytest.mark.parametrize(
    ("base", "scheme", "message"),
    [
        ([], [], "no values"),
        ([1, 0, 1], [1, 0], "pair them"),
        ([1.0, float("nan")], [1.0, 1.0], "NaN"),
    ],
)
def test_bad_input_raises_a_clear_error(base, scheme, message):
    with pytest.raises(stats.StatsError, match=message):
        stats.paired_accuracy_bootstrap(base, scheme)


def test_bad_settings_raise():
    with pytest.raises(stats.StatsError, match="confidence"):
        stats.perplexity_increase_bootstrap([1.0, 2.0], [1.0, 2.0], confidence=95)


# --- the point is the plain paired estimate; pseudo pairs only widen --------


def test_pseudo_pairs_widen_the_interval_but_never_move_it():
    # 10 examples the baseline got right, half of them lost by the scheme: recovery 0.5. The plain
    # paired bootstrap draws Binomial(10, 0.5)/10, whose 2.5% and 97.5% points are 0.2 and 0.8.
    # One pseudo disagreement each way recentres on 6/11 = 0.545; used as they come, they pulled
    # the lower end up to 0.25, so a lost answer looked partly recovered.
    base, scheme = np.ones(10), np.array([1.0] * 5 + [0.0] * 5)
    result = stats.paired_accuracy_bootstrap(base, scheme)
    assert result.recovery.estimate == 0.5 and result.difference.estimate == -0.5
    assert result.recovery.lo <= 0.2 and result.recovery.hi >= 0.8
    assert result.difference.lo <= -0.8 and result.difference.hi >= -0.2
    # Bounded by what the quantity can be: a recovery is never negative, a difference >= -1.
    assert result.recovery.lo >= 0.0 and result.difference.lo >= -1.0


def test_average_recovery_point_is_the_plain_average_and_interval_covers_the_plain_one():
    base, scheme = np.ones(10), np.array([1.0] * 5 + [0.0] * 5)
    interval = stats.average_recovery_bootstrap([(base, scheme)])
    assert interval.estimate == 0.5
    assert interval.lo <= 0.2 and interval.hi >= 0.8


def test_resampling_counts_matches_resampling_indices():
    # 0/1 scores are resampled as multinomial counts of the four (baseline, scheme) value pairs;
    # the same data made continuous by a negligible offset is resampled by index.
    base = _scores(400, 0.7, seed=13)
    scheme = np.where(np.random.default_rng(14).random(400) < 0.15, 1 - base, base)
    jitter = np.arange(400) * 1e-12
    counts = stats.paired_accuracy_bootstrap(base, scheme, n_resamples=4000).difference
    indices = stats.paired_accuracy_bootstrap(base + jitter, scheme + jitter, n_resamples=4000).difference
    assert counts.estimate == pytest.approx(indices.estimate, abs=1e-9)
    assert counts.half_width == pytest.approx(indices.half_width, rel=0.1)


# --- examples needed to settle, capped at the dataset's size ---------------


def test_examples_to_settle_within_the_dataset_gives_the_count():
    settling = stats.examples_to_settle(100, 0.0, -1.0, 1.0, 0.5, dataset_size=1000)
    assert (settling.n_needed, settling.note) == (400, None)


def test_examples_to_settle_beyond_the_dataset_cannot_be_settled():
    settling = stats.examples_to_settle(100, 0.0, -1.0, 1.0, 0.25, dataset_size=1000)  # needs 1600
    assert settling.n_needed is None
    assert settling.note.startswith("cannot be settled with this dataset")
    assert "1600" in settling.note and "1000" in settling.note


def test_examples_to_settle_without_a_known_size_says_it_is_uncapped():
    settling = stats.examples_to_settle(100, 0.0, -1.0, 1.0, 0.25, dataset_size=None)
    assert settling.n_needed == 1600 and "not capped" in settling.note
    on_threshold = stats.examples_to_settle(100, 0.5, 0.0, 1.0, 0.5, dataset_size=1000)
    assert on_threshold.n_needed is None and "will not settle" in on_threshold.note
