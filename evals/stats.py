"""Paired bootstrap confidence intervals and the interval-versus-threshold decision.

The sign-off compares a quantized scheme with its baseline on the *same* examples
(documents scored by both) and the *same* perplexity windows. Pairing removes the
example-to-example spread, which is much larger than the 0.1-0.4 perplexity deltas
or the one-point accuracy drops being judged, so every interval here resamples
indices once and applies them to both arrays.

Intervals are percentile bootstrap intervals around the plain paired estimate.
Accuracy intervals are widened, never moved, by a second bootstrap with one
pseudo disagreement each way (see ``_widened``). Results are reproducible: the
generator is ``np.random.default_rng(seed)`` and is drawn in a fixed order.

``examples_to_settle`` says how many examples would settle an inconclusive
interval, capped at the dataset's size ("cannot be settled with this dataset").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

PASS = "PASS"
FAIL = "FAIL"
INCONCLUSIVE = "INCONCLUSIVE"

# Bound the (resamples x examples) index block held at once: a 10k-example task
# with 2,000 resamples would otherwise need 160 MB of int64 indices.
_MAX_INDICES_PER_CHUNK = 4_000_000
# Up to this many distinct (baseline, scheme) value pairs, resample counts instead of indices.
_MAX_DISTINCT_FOR_COUNTS = 64


class StatsError(ValueError):
    """Input that the statistics cannot use (empty, unpaired, non-finite)."""


@dataclass(frozen=True)
class BootstrapInterval:
    """A point estimate with its percentile bootstrap interval."""

    estimate: float
    lo: float
    hi: float
    n: int
    confidence: float
    n_resamples: int
    seed: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedAccuracy:
    """Baseline and scheme accuracy on the same examples, their difference and ratio."""

    baseline_mean: float
    scheme_mean: float
    difference: BootstrapInterval  # scheme - baseline, as a fraction (0.01 = one point)
    recovery: BootstrapInterval  # scheme / baseline

    def to_dict(self) -> dict:
        return {
            "baseline_mean": self.baseline_mean,
            "scheme_mean": self.scheme_mean,
            "difference": self.difference.to_dict(),
            "recovery": self.recovery.to_dict(),
        }


def paired_accuracy_bootstrap(
    baseline: Sequence[float] | np.ndarray,
    scheme: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedAccuracy:
    """Bootstrap the difference and recovery of per-example scores paired by position.

    The point estimates are the plain paired ones (the observed means); the
    pseudo pairs only widen the intervals around them (see ``_widened``).
    """
    pair = _paired_arrays("accuracy", baseline, scheme)
    _check_settings(confidence, n_resamples)
    rng = np.random.default_rng(seed)
    augmented = _with_discordant_pseudo_pairs(pair)
    plain_means = _resample_means(pair, rng, n_resamples)  # (n_resamples, 2)
    pseudo_means = _resample_means(augmented, rng, n_resamples)
    base_mean, scheme_mean = (float(v) for v in pair.mean(axis=1))
    aug_base, aug_scheme = (float(v) for v in augmented.mean(axis=1))
    n = pair.shape[1]
    diffs = augmented[1] - augmented[0]
    difference = _widened(
        scheme_mean - base_mean,
        plain_means[:, 1] - plain_means[:, 0],
        aug_scheme - aug_base,
        pseudo_means[:, 1] - pseudo_means[:, 0],
        (float(diffs.min()), float(diffs.max())),  # a mean of differences stays within them
        n, confidence, n_resamples, seed,
    )
    recovery = _widened(
        _ratio(scheme_mean, base_mean),
        _ratios(plain_means[:, 1], plain_means[:, 0]),
        _ratio(aug_scheme, aug_base),
        _ratios(pseudo_means[:, 1], pseudo_means[:, 0]),
        _recovery_range(pair),
        n, confidence, n_resamples, seed,
    )
    return PairedAccuracy(base_mean, scheme_mean, difference, recovery)


def average_recovery_bootstrap(
    tasks: Sequence[tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> BootstrapInterval:
    """Bootstrap the recovery of the task-average score: mean_t(scheme_t) / mean_t(baseline_t).

    Each task counts equally whatever its size. Every replicate resamples every
    task's examples (paired within the task) and then averages over tasks, so
    the interval reflects the joint sampling noise of all tasks. The point is the
    plain average; the pseudo pairs only widen the interval.
    """
    if not tasks:
        raise StatsError("average recovery needs at least one task; none were given")
    _check_settings(confidence, n_resamples)
    pairs = [_paired_arrays(f"task #{i}", b, s) for i, (b, s) in enumerate(tasks)]
    augmented = [_with_discordant_pseudo_pairs(pair) for pair in pairs]
    rng = np.random.default_rng(seed)
    plain = np.stack([_resample_means(pair, rng, n_resamples) for pair in pairs]).mean(axis=0)  # (R, 2)
    pseudo = np.stack([_resample_means(pair, rng, n_resamples) for pair in augmented]).mean(axis=0)
    point_avg = np.mean([pair.mean(axis=1) for pair in pairs], axis=0)
    aug_avg = np.mean([pair.mean(axis=1) for pair in augmented], axis=0)
    return _widened(
        _ratio(float(point_avg[1]), float(point_avg[0])),
        _ratios(plain[:, 1], plain[:, 0]),
        _ratio(float(aug_avg[1]), float(aug_avg[0])),
        _ratios(pseudo[:, 1], pseudo[:, 0]),
        _recovery_range(*pairs),
        sum(pair.shape[1] for pair in pairs),
        confidence,
        n_resamples,
        seed,
    )


def perplexity_increase_bootstrap(
    baseline_window_nll: Sequence[float] | np.ndarray,
    scheme_window_nll: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> BootstrapInterval:
    """Bootstrap the relative perplexity increase exp(mean nll_s) / exp(mean nll_b) - 1 over paired windows."""
    pair = _paired_arrays("perplexity windows", baseline_window_nll, scheme_window_nll)
    _check_settings(confidence, n_resamples)
    rng = np.random.default_rng(seed)
    means = _resample_means(pair, rng, n_resamples)
    base_mean, scheme_mean = (float(v) for v in pair.mean(axis=1))
    # exp(a)/exp(b) - 1 == expm1(a - b): exact for tiny deltas and never overflows.
    return _interval(
        math.expm1(scheme_mean - base_mean),
        np.expm1(means[:, 1] - means[:, 0]),
        pair.shape[1],
        confidence,
        n_resamples,
        seed,
    )


def classify(lo: float, hi: float, threshold: float, *, upper_bound: bool) -> str:
    """Return PASS, FAIL or INCONCLUSIVE for an interval against a threshold.

    ``upper_bound=True`` means the quantity must stay at or below the threshold
    (a maximum perplexity increase); ``False`` means at or above it (a minimum
    recovery). PASS needs the whole interval on the safe side, FAIL the whole
    interval on the wrong side; anything straddling is INCONCLUSIVE.
    """
    if upper_bound:
        if hi <= threshold:
            return PASS
        return FAIL if lo > threshold else INCONCLUSIVE
    if lo >= threshold:
        return PASS
    return FAIL if hi < threshold else INCONCLUSIVE


def samples_needed(n: int, estimate: float, lo: float, hi: float, threshold: float) -> int | None:
    """Estimate the total sample count whose interval would clear the threshold.

    Interval widths shrink like 1/sqrt(n), so the interval stops straddling once
    n * (width / |estimate - threshold|)^2 samples are used, assuming the
    estimate stays put. ``width`` is the distance from the estimate to the
    interval end on the threshold's side (the half-width for a symmetric
    interval), so a straddling interval never asks for fewer than n. Returns None
    when the estimate sits on the threshold or is not finite: no sample size
    settles it.
    """
    margin = abs(estimate - threshold)
    width = hi - estimate if threshold > estimate else estimate - lo
    if margin == 0 or not math.isfinite(margin) or not math.isfinite(width):
        return None
    return max(n, math.ceil(n * (width / margin) ** 2))


@dataclass(frozen=True)
class Settling:
    """How many examples would settle an inconclusive gate, within the dataset at hand.

    ``n_needed`` is the total example count whose interval would clear the
    threshold, or None when no count within the dataset does; ``note`` says why
    (the estimate sits on the threshold, or the dataset is too small).
    """

    n_needed: int | None
    note: str | None = None


CANNOT_SETTLE = "cannot be settled with this dataset"


def examples_to_settle(
    n: int, estimate: float, lo: float, hi: float, threshold: float, dataset_size: int | None
) -> Settling:
    """``samples_needed``, capped at the dataset's size.

    Beyond ``dataset_size`` (all the examples the dataset has) more examples do
    not exist, so the answer is "cannot be settled with this dataset", not a
    count nobody can run. ``dataset_size=None`` means the size is unknown: the
    estimate is returned uncapped, and the note says so.
    """
    needed = samples_needed(n, estimate, lo, hi, threshold)
    if needed is None:
        return Settling(None, "estimate equals the threshold: more examples will not settle it")
    if dataset_size is not None and needed > dataset_size:
        return Settling(
            None,
            f"{CANNOT_SETTLE}: about {needed} examples needed, the dataset has {dataset_size}",
        )
    if dataset_size is None:
        return Settling(needed, "dataset size unknown: the estimate is not capped")
    return Settling(needed)


def _paired_arrays(what: str, baseline, scheme) -> np.ndarray:
    base = np.asarray(baseline, dtype=np.float64).ravel()
    other = np.asarray(scheme, dtype=np.float64).ravel()
    if base.size == 0:
        raise StatsError(f"{what}: no values to bootstrap; evaluate at least one example")
    if base.shape != other.shape:
        raise StatsError(
            f"{what}: baseline has {base.size} values and scheme {other.size}; "
            "pair them by example (same doc_ids / windows) before bootstrapping"
        )
    if not (np.isfinite(base).all() and np.isfinite(other).all()):
        raise StatsError(f"{what}: values contain NaN or infinity; check the evaluation output")
    return np.stack([base, other])


def _with_discordant_pseudo_pairs(pair: np.ndarray) -> np.ndarray:
    """Add one disagreement each way before resampling (Agresti-Min style).

    A paired bootstrap over examples the two models answered identically has a
    zero-width interval, so 20 matching answers would "prove" full recovery. One
    pseudo pair where only the baseline is right and one where only the scheme is
    right widen the interval to what so few examples can support; with hundreds of
    examples their effect vanishes. They would also pull the interval's centre
    toward "no change", so they are only used through ``_widened``.
    """
    return np.concatenate([pair, np.array([[1.0, 0.0], [0.0, 1.0]])], axis=1)


def _check_settings(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if n_resamples < 1:
        raise StatsError(f"n_resamples must be at least 1, got {n_resamples}")


def _resample_means(pair: np.ndarray, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    """Return the (n_resamples, 2) means of baseline and scheme under shared resampled indices.

    Per-example accuracies take a handful of distinct (baseline, scheme) values (four for
    0/1 scores). Resampling n examples with replacement then only decides how many of
    each value pair are drawn, which is one multinomial draw: the same distribution as
    drawing n indices, at a cost that does not grow with n. Continuous values (window
    NLLs) draw indices.
    """
    n = pair.shape[1]
    values, counts = np.unique(pair.T, axis=0, return_counts=True)  # (k, 2) distinct pairs
    if len(values) <= _MAX_DISTINCT_FOR_COUNTS:
        drawn = rng.multinomial(n, counts / n, size=n_resamples)  # (n_resamples, k)
        return drawn @ values / n
    rows_per_chunk = max(1, _MAX_INDICES_PER_CHUNK // n)
    out = np.empty((n_resamples, pair.shape[0]))
    for start in range(0, n_resamples, rows_per_chunk):
        stop = min(n_resamples, start + rows_per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = pair[:, idx].mean(axis=2).T
    return out


def _ratio(numerator: float, denominator: float) -> float:
    return float(_ratios(np.array([numerator]), np.array([denominator]))[0])


def _ratios(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # 0/0 means both scored nothing: call that full recovery rather than NaN,
    # which would poison the quantiles; x/0 with x > 0 is an unbounded gain.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = numerator / denominator
    both_zero = (numerator == 0) & (denominator == 0)
    return np.where(both_zero, 1.0, ratio)


def _interval(
    estimate: float, replicates: np.ndarray, n: int, confidence: float, n_resamples: int, seed: int
) -> BootstrapInterval:
    lo, hi = _quantiles(replicates, confidence)
    return BootstrapInterval(float(estimate), lo, hi, int(n), confidence, n_resamples, seed)


def _quantiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    # Interpolating between infinite ratios (baseline resampled to zero) gives
    # NaN; fall back to picking observed replicates in that rare case.
    method = "linear" if np.isfinite(replicates).all() else "inverted_cdf"
    lo, hi = np.quantile(replicates, [alpha / 2, 1 - alpha / 2], method=method)
    return float(lo), float(hi)


def _widened(
    estimate: float,
    plain: np.ndarray,
    pseudo_estimate: float,
    pseudo: np.ndarray,
    bounds: tuple[float, float],
    n: int,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> BootstrapInterval:
    """The plain paired interval, widened (never moved) by the pseudo-pair bootstrap.

    The pseudo pairs shift their replicates toward "no change" (recovery 1,
    difference 0). Used as they come, that shift would move the interval, and a
    lost answer would look partly recovered. So the pseudo-pair interval only
    lends its widths: each side of the interval reaches as far from the plain
    estimate as the plain bootstrap's or the pseudo-pair bootstrap's (measured
    from its own centre), whichever is farther; ``bounds`` clips to what the
    quantity can take (a recovery is never negative).
    """
    plain_lo, plain_hi = _quantiles(plain, confidence)
    pseudo_lo, pseudo_hi = _quantiles(pseudo, confidence)
    finite = all(map(math.isfinite, (estimate, pseudo_estimate, pseudo_lo, pseudo_hi)))
    if finite:
        lo = min(plain_lo, estimate - (pseudo_estimate - pseudo_lo))
        hi = max(plain_hi, estimate + (pseudo_hi - pseudo_estimate))
    else:  # an unbounded ratio has no width to lend: take the union
        lo, hi = min(plain_lo, pseudo_lo), max(plain_hi, pseudo_hi)
    lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return BootstrapInterval(float(estimate), lo, hi, int(n), confidence, n_resamples, seed)


def _recovery_range(*pairs: np.ndarray) -> tuple[float, float]:
    # A ratio of means of non-negative scores is never negative.
    non_negative = all((pair >= 0).all() for pair in pairs)
    return (0.0 if non_negative else -math.inf, math.inf)
