"""The sign-off's pass criteria: the ``gates:`` block of a suite, overridable per model.

Quality gates (perplexity, task accuracy) are judged on paired bootstrap
intervals (``pipelines.signoff.quality``); cost gates (weights, decode speed,
TTFT), absolute or relative to the baseline, are plain comparisons
(``pipelines.signoff.cost``). This module only validates and merges the
configuration.

Every threshold must be a finite number: ``.inf`` or ``nan`` would make a
gate pass (or fail) every scheme whatever was measured, so they are refused at planning with
the gate's name; null is the way to disable a gate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.errors import QevalError
from pipelines.recipes import deep_merge

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class BatchThreshold(BaseModel):
    """A threshold on a speed measurement taken at one batch size."""

    model_config = ConfigDict(extra="forbid")

    bs: int = Field(ge=1, description="Batch size whose measurement is gated.")
    value: float = Field(
        gt=0,
        allow_inf_nan=False,
        description=(
            "Threshold in the gated metric's unit (tok/s or ms), or a multiple of the "
            "baseline's figure for the *_rel gates (1.0 = as fast as the baseline)."
        ),
    )


class FloorMultiple(BaseModel):
    """A threshold stated as a multiple of the model's measured noise floor (fidelity.json)."""

    model_config = ConfigDict(extra="forbid")

    floor_x: float = Field(gt=0, allow_inf_nan=False, description="Multiple of the noise floor's figure (e.g. 20).")


class Gates(BaseModel):
    """Pass criteria of the sign-off, from the suite's ``gates:`` block (overridable per model)."""

    model_config = ConfigDict(extra="forbid")

    ppl_max_rel_increase: NonNegative | dict[str, NonNegative | None] | None = Field(
        default=0.03,
        description=(
            "Largest allowed relative perplexity increase over the baseline, ppl_s/ppl_b - 1 "
            "(0.03 = 3%). A number applies to every dataset the baseline measured; a mapping "
            "gates only the datasets it names (a null entry ungates one); null disables."
        ),
    )
    acc_min_recovery: Positive | None = Field(
        default=0.99,
        description="Smallest allowed accuracy recovery (scheme / baseline) on each task; null disables.",
    )
    acc_min_recovery_avg: Positive | None = Field(
        default=0.99,
        description=(
            "Smallest allowed recovery of the task-average accuracy, "
            "mean_t(scheme_t) / mean_t(baseline_t), each task weighted equally; null disables."
        ),
    )
    acc_max_drop_points: NonNegative | None = Field(
        default=None,
        description=(
            "Largest allowed absolute accuracy drop on each task, in points "
            "(1.0 = one percentage point); an alternative or addition to acc_min_recovery."
        ),
    )
    acc_metric: Literal["acc", "acc_norm"] = Field(
        default="acc",
        description=(
            "Per-example metric the accuracy gates use; tasks without acc_norm "
            "(e.g. lambada) fall back to acc, with a note."
        ),
    )
    acc_tasks: list[str] | None = Field(
        default=None,
        description="Tasks the accuracy gates cover; null means every task the baseline measured.",
    )
    # Fidelity gates (pipelines/signoff/fidelity_gates.py): eval/fidelity.json against the
    # baseline, intervals by resampling perplexity windows; flips from the task samples.
    kl_max_mean: Positive | FloorMultiple | None = Field(
        default=None,
        description=(
            "Largest allowed mean KL(baseline||scheme) per token, nats, on every fidelity dataset; "
            "or {floor_x: m}: m times the noise floor's mean. A top-k KL is a lower bound (see fidelity.json)."
        ),
    )
    kl_max_p99: Positive | FloorMultiple | None = Field(
        default=None, description="Largest allowed p99 of per-token KL(baseline||scheme), nats; or {floor_x: m}."
    )
    top1_min_agreement: Fraction | None = Field(
        default=None, description="Smallest allowed share of positions whose top token is the baseline's."
    )
    flip_max_rate: Fraction | None = Field(
        default=None,
        description="Largest allowed share of task examples whose correctness differs from the baseline's.",
    )
    collapse_max_increase: Fraction | None = Field(
        default=None,
        description=(
            "Generative tasks: largest allowed mean increase over the baseline, per example, of the "
            "repeated 4-gram rate, the share of answers with no number, and of empty or truncated answers."
        ),
    )
    # Cost gates: decided only on numbers measured on the model's target_device by a
    # representative (not emulated) run; otherwise SKIPPED with the reason.
    max_weights_gib: Positive | None = Field(
        default=None,
        description="Largest allowed resident weights size in GiB; null disables.",
    )
    min_decode_tok_s: BatchThreshold | None = Field(
        default=None,
        description="Smallest allowed median decode tok/s at a batch size, e.g. {bs: 1, value: 30}.",
    )
    max_ttft_ms_p99: BatchThreshold | None = Field(
        default=None,
        description="Largest allowed p99 time to first token in ms at a batch size, e.g. {bs: 1, value: 200}.",
    )
    max_weights_rel: Positive | None = Field(
        default=None,
        description="Largest allowed weights size as a multiple of the baseline's (0.6 = at most 60%).",
    )
    min_decode_rel: BatchThreshold | None = Field(
        default=None,
        description=(
            "Smallest allowed median decode tok/s as a multiple of the baseline's at the same "
            "batch size, e.g. {bs: 1, value: 1.0} = at least as fast as the baseline."
        ),
    )
    max_ttft_rel: BatchThreshold | None = Field(
        default=None,
        description=(
            "Largest allowed p99 time to first token as a multiple of the baseline's at the same "
            "batch size, e.g. {bs: 1, value: 1.2} = at most 20% slower to the first token."
        ),
    )
    # Serving gates (pipelines/signoff/serving.py): serve/serve.json, capacity at the suite's slo:
    # and $ per 1M output tokens at that capacity; decided only on the model's target device/engine.
    min_capacity: Positive | None = Field(
        default=None, description="Smallest allowed capacity at the SLO, in concurrent streams.")
    min_capacity_rel: Positive | None = Field(
        default=None, description="Smallest allowed capacity at the SLO as a multiple of the baseline's.")
    max_usd_per_m_rel: Positive | None = Field(
        default=None, description="Largest allowed $ per 1M output tokens as a multiple of the baseline's.")
    confidence: float = Field(
        default=0.95, gt=0, lt=1, allow_inf_nan=False, description="Coverage of the two-sided bootstrap intervals."
    )
    n_resamples: int = Field(
        default=2000,
        ge=100,
        description="Bootstrap replicates per interval (fewer gives unstable bounds).",
    )
    seed: int = Field(
        default=0, ge=0, description="Seed of np.random.default_rng for every interval."
    )

    def perplexity_thresholds(self, measured: Iterable[str]) -> dict[str, float]:
        """Return dataset -> max relative increase for the datasets this config gates."""
        if self.ppl_max_rel_increase is None:
            return {}
        if isinstance(self.ppl_max_rel_increase, dict):
            return {k: v for k, v in self.ppl_max_rel_increase.items() if v is not None}
        return {name: float(self.ppl_max_rel_increase) for name in sorted(measured)}


def merge_gates(
    suite_gates: Mapping[str, Any] | None, model_override: Mapping[str, Any] | None
) -> Gates:
    """Validate the suite's gates, apply the model's override on top and return the result.

    Mappings merge key by key (an override ``{ppl_max_rel_increase: {c4: 0.05}}``
    keeps the suite's wikitext2 threshold; ``{min_decode_rel: {value: 0.8}}`` keeps
    the suite's batch size); anything else replaces the suite value, and null
    disables a gate.
    """
    suite = dict(suite_gates or {})
    override = dict(model_override or {})
    _validate(suite, "the suite's gates block")
    unknown = sorted(set(override) - set(Gates.model_fields))
    if unknown:
        raise QevalError(
            f"unknown gate {', '.join(map(repr, unknown))} in the model's gates override; "
            f"valid keys: {', '.join(Gates.model_fields)}"
        )
    return _validate(deep_merge(suite, override), "the gates after the model override")


def non_finite(data: Any, path: str = "") -> list[tuple[str, float]]:
    """(gate path, value) of every infinite or NaN number in a gates block, e.g. ('kl_max_mean.floor_x', inf)."""
    if isinstance(data, Mapping):
        return [hit for k, v in data.items() for hit in non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(data, list | tuple):
        return [hit for i, v in enumerate(data) for hit in non_finite(v, f"{path}[{i}]")]
    if isinstance(data, float) and not math.isfinite(data):
        return [(path, data)]
    return []


def _validate(data: dict, source: str) -> Gates:
    bad = non_finite(data)
    if bad:
        listed = ", ".join(f"{gate} = {value}" for gate, value in bad)
        raise QevalError(
            f"invalid {source}: {listed}: a gate threshold must be a finite number (an infinite or NaN "
            "threshold passes or fails every scheme whatever was measured). Set a finite threshold, "
            "or null to disable the gate."
        )
    try:
        return Gates.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise QevalError(
            f"invalid {source}: {problems}. Fix the recipe (see pipelines/signoff/gates.py Gates)."
        ) from err
