"""Answer flips between a scheme and its baseline on the same task examples.

Accuracy can hold while many answers change: an example right for the baseline and wrong for
the scheme (correct→wrong) cancels one the other way. From the per-example samples both kept
(paired by ``doc_id``): both counts, the flip rate, the net change with an exact McNemar test
(two-sided binomial on the discordant pairs) and a paired bootstrap interval, and the minimum
detectable effect at this sample size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Flips:
    task: str
    metric: str
    n: int
    baseline_accuracy: float
    scheme_accuracy: float
    correct_to_wrong: int
    wrong_to_correct: int
    flip_rate: float  # (c→w + w→c) / n
    net_change: float  # scheme accuracy - baseline accuracy, fraction
    mcnemar_p: float  # exact two-sided
    net_ci: tuple[float, float]  # paired bootstrap interval of net_change
    flip_rate_ci: tuple[float, float]  # bootstrap interval of flip_rate
    mde_points: float  # smallest net change (points) a 95% interval at this n can tell from zero
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: binomial(b + c, 1/2) tail at min(b, c), doubled, capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def mde_points(n: int, rate: float = 0.5) -> float:
    """Half-width in points of a 95% interval of an accuracy measured on ``n`` examples (worst case 0.5).

    "with 50 examples this task can only detect a change of 14 points or more": a change
    smaller than this cannot be told from sampling noise at this size.
    """
    return 100 * Z95 * math.sqrt(rate * (1 - rate) / n) if n > 0 else float("inf")


def paired_mde_points(n: int, flip_rate: float) -> float:
    """The same for a paired comparison: the net change's spread comes only from the flips."""
    return 100 * Z95 * math.sqrt(max(flip_rate, 1.0 / max(n, 1)) / n) if n > 0 else float("inf")


def count_flips(task: str, metric: str, baseline: dict[Any, float], scheme: dict[Any, float], *,
                confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Flips:
    """Flips on the doc_ids both kept; scores are 0/1 (a score > 0.5 counts as correct)."""
    common = sorted(set(baseline) & set(scheme), key=str)
    if not common:
        raise ValueError(f"{task}: the baseline and the scheme share no doc_id; evaluate both on the same examples")
    b = np.array([baseline[i] > 0.5 for i in common])
    s = np.array([scheme[i] > 0.5 for i in common])
    c2w, w2c, n = int((b & ~s).sum()), int((~b & s).sum()), len(common)
    diff = s.astype(float) - b.astype(float)
    flipped = (b != s).astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    alpha = (1 - confidence) / 2
    net_lo, net_hi = np.quantile(diff[idx].mean(1), [alpha, 1 - alpha])
    fr_lo, fr_hi = np.quantile(flipped[idx].mean(1), [alpha, 1 - alpha])
    rate = (c2w + w2c) / n
    return Flips(task, metric, n, float(b.mean()), float(s.mean()), c2w, w2c, rate, float(diff.mean()), mcnemar_exact_p(c2w, w2c),
                 (float(net_lo), float(net_hi)), (float(fr_lo), float(fr_hi)), paired_mde_points(n, rate), confidence)
