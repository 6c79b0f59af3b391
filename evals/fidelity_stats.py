"""Bootstrap intervals over perplexity windows for the fidelity figures (KL mean and p99, top-1).

Windows are the resampling unit (tokens inside a window are not independent): every
replicate draws windows with replacement and recomputes the token-pooled statistic, the
mean weighted by each window's scored tokens, or a percentile of the pooled per-token
values. Reproducible: ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evals.stats import BootstrapInterval, StatsError

_MAX_POOLED_PER_REPLICATE = 50_000_000  # tokens pooled at once across replicates of a percentile


def _check(confidence: float, n_resamples: int, n: int) -> None:
    if not 0 < confidence < 1 or n_resamples < 1:
        raise StatsError(f"confidence must be in (0, 1) and n_resamples >= 1, got {confidence}, {n_resamples}")
    if n < 1:
        raise StatsError("no windows to resample")


def _percentile_interval(estimate: float, reps: np.ndarray, n: int, confidence: float, n_resamples: int,
                         seed: int) -> BootstrapInterval:
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return BootstrapInterval(float(estimate), float(lo), float(hi), n, confidence, n_resamples, seed)


def weighted_mean_bootstrap(window_means: Sequence[float], window_tokens: Sequence[int], *,
                            confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> BootstrapInterval:
    """Token-weighted mean of per-window means, resampling windows."""
    means, weights = np.asarray(window_means, float), np.asarray(window_tokens, float)
    if means.shape != weights.shape:
        raise StatsError(f"{means.size} window means but {weights.size} window token counts")
    _check(confidence, n_resamples, means.size)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, means.size, size=(n_resamples, means.size))
    reps = (means[idx] * weights[idx]).sum(1) / weights[idx].sum(1)
    estimate = float((means * weights).sum() / weights.sum())
    return _percentile_interval(estimate, reps, means.size, confidence, n_resamples, seed)


def pooled_percentile_bootstrap(token_values: np.ndarray, window_tokens: Sequence[int], q: float, *,
                                confidence: float = 0.95, n_resamples: int = 2000,
                                seed: int = 0) -> BootstrapInterval:
    """The q-th percentile of per-token values pooled over windows, resampling windows."""
    tokens = np.asarray(window_tokens, int)
    values = np.asarray(token_values, float)
    if tokens.sum() != values.size:
        raise StatsError(f"{values.size} token values but the windows hold {tokens.sum()} tokens")
    _check(confidence, n_resamples, tokens.size)
    starts = np.concatenate([[0], np.cumsum(tokens)[:-1]])
    windows = [values[s:s + t] for s, t in zip(starts, tokens, strict=True)]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, tokens.size, size=(n_resamples, tokens.size))
    reps = np.array([np.percentile(np.concatenate([windows[i] for i in row]), q) for row in idx])
    return _percentile_interval(float(np.percentile(values, q)), reps, tokens.size, confidence, n_resamples, seed)
