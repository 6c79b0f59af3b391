"""Paired bootstrap confidence intervals and the interval-versus-threshold decision.

The sign-off compares a quantized scheme with its baseline on the *same* examples
(documents scored by both) and the *same* perplexity windows. Pairing removes the
example-to-example spread, which is much larger than the 0.1-0.4 perplexity deltas
or the one-point accuracy drops being judged, so every interval here resamples
indices once and applies them to both arrays.

Intervals are percentile bootstrap intervals. Results are reproducible: the
generator is ``np.random.default_rng(seed)`` and is drawn in a fixed order.
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
    """Bootstrap the difference and recovery of per-example scores paired by position."""
    pair = _paired_arrays("accuracy", baseline, scheme)
    _check_settings(confidence, n_resamples)
    rng = np.random.default_rng(seed)
    means = _resample_means(_with_discordant_pseudo_pairs(pair), rng, n_resamples)  # (n_resamples, 2)
    base_mean, scheme_mean = (float(v) for v in pair.mean(axis=1))
    n = pair.shape[1]
    difference = _interval(
        scheme_mean - base_mean, means[:, 1] - means[:, 0], n, confidence, n_resamples, seed
    )
    recovery = _interval(
        _ratio(scheme_mean, base_mean),
        _ratios(means[:, 1], means[:, 0]),
        n,
        confidence,
        n_resamples,
        seed,
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
    the interval reflects the joint sampling noise of all tasks.
    """
    if not tasks:
        raise StatsError("average recovery needs at least one task; none were given")
    _check_settings(confidence, n_resamples)
    pairs = [_paired_arrays(f"task #{i}", b, s) for i, (b, s) in enumerate(tasks)]
    rng = np.random.default_rng(seed)
    per_task = np.stack(
        [_resample_means(_with_discordant_pseudo_pairs(pair), rng, n_resamples) for pair in pairs]
    )  # (tasks, R, 2)
    replicate_avg = per_task.mean(axis=0)  # (R, 2)
    point_avg = np.mean([pair.mean(axis=1) for pair in pairs], axis=0)
    return _interval(
        _ratio(float(point_avg[1]), float(point_avg[0])),
        _ratios(replicate_avg[:, 1], replicate_avg[:, 0]),
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
    examples their effect vanishes. The point estimate stays the observed one.
    """
    return np.concatenate([pair, np.array([[1.0, 0.0], [0.0, 1.0]])], axis=1)


def _check_settings(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence}")
    if n_resamples < 1:
        raise StatsError(f"n_resamples must be at least 1, got {n_resamples}")


def _resample_means(pair: np.ndarray, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    """Return the (n_resamples, 2) means of baseline and scheme under shared resampled indices."""
    n = pair.shape[1]
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
    alpha = 1.0 - confidence
    # Interpolating between infinite ratios (baseline resampled to zero) gives
    # NaN; fall back to picking observed replicates in that rare case.
    method = "linear" if np.isfinite(replicates).all() else "inverted_cdf"
    lo, hi = np.quantile(replicates, [alpha / 2, 1 - alpha / 2], method=method)
    return BootstrapInterval(
        float(estimate), float(lo), float(hi), int(n), confidence, n_resamples, seed
    )
