"""What one gate decided: the verdict names, ``GateResult``, and turning an interval into one.

Shared by the quality and cost gates (``quality.py``, ``cost.py``) and by the
per-scheme verdict (``verdict.py``), which is why it sits below all three.

Verdicts: PASS, FAIL, INCONCLUSIVE, SKIPPED (gates); BASELINE (the reference
scheme, which is not gated) and NOT JUDGED (a scheme whose stages are not all
done under their current keys, so its files are not evidence). NOTHING TO SIGN
OFF is the overall verdict of a sweep that ran only the baseline (exit 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from evals import stats

PASS = stats.PASS
FAIL = stats.FAIL
INCONCLUSIVE = stats.INCONCLUSIVE
SKIPPED = "SKIPPED"
BASELINE = "BASELINE"
NOT_JUDGED = "NOT JUDGED"
NOTHING_TO_SIGN_OFF = "NOTHING TO SIGN OFF"  # overall: only the baseline ran, and it finished


@dataclass(frozen=True)
class GateResult:
    """One gate's outcome for one scheme.

    ``baseline``/``value``/``delta`` describe the raw metric (perplexity,
    accuracy as a fraction, GiB, tok/s, ms); ``estimate``/``ci``/``threshold``
    describe the gated quantity (relative increase, recovery, drop in points,
    the raw value or its ratio to the baseline for cost gates), compared with
    ``comparison``. ``n_needed`` is the example count that would settle an
    INCONCLUSIVE gate; ``n_available`` the dataset's size where known.
    """

    gate: str
    metric: str
    quantity: str
    comparison: Literal["<=", ">="]
    threshold: float
    verdict: str
    baseline: float | None = None
    value: float | None = None
    delta: float | None = None
    estimate: float | None = None
    ci: tuple[float, float] | None = None
    n: int | None = None
    n_needed: int | None = None
    n_available: int | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return {
            "gate": self.gate,
            "metric": self.metric,
            "quantity": self.quantity,
            "comparison": self.comparison,
            "baseline": json_float(self.baseline),
            "value": json_float(self.value),
            "delta": json_float(self.delta),
            "estimate": json_float(self.estimate),
            "ci": None if self.ci is None else [json_float(self.ci[0]), json_float(self.ci[1])],
            "threshold": self.threshold,
            "verdict": self.verdict,
            "n": self.n,
            "n_needed": self.n_needed,
            "n_available": self.n_available,
            "note": self.note,
        }


def interval_result(
    common: dict,
    raw: dict,
    interval: stats.BootstrapInterval,
    *,
    upper_bound: bool,
    dataset_size: int | None = None,
    note: str | None = None,
) -> GateResult:
    """Decide a gate on a bootstrap interval; an INCONCLUSIVE one says what would settle it."""
    threshold = common["threshold"]
    verdict = stats.classify(interval.lo, interval.hi, threshold, upper_bound=upper_bound)
    needed = None
    if verdict == INCONCLUSIVE:
        settling = stats.examples_to_settle(
            interval.n, interval.estimate, interval.lo, interval.hi, threshold, dataset_size
        )
        needed = settling.n_needed
        note = join_notes(note, settling.note)
    return GateResult(
        **common,
        **raw,
        verdict=verdict,
        estimate=interval.estimate,
        ci=(interval.lo, interval.hi),
        n=interval.n,
        n_needed=needed,
        n_available=dataset_size,
        note=note,
    )


def join_notes(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def missing_side(base_missing: str | None, scheme_missing: str | None) -> str | None:
    return " and ".join(filter(None, [base_missing, scheme_missing])) or None


def sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def json_float(x: float | None) -> float | str | None:
    # JSON has no infinity; an unbounded recovery (baseline scored 0) is written as a string.
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else "-inf"
