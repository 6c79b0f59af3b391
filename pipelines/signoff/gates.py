"""Sign-off gates: their configuration and the evaluation of a scheme against them.

A gate compares one quantity of a quantized scheme with a threshold. Quality
gates (perplexity, task accuracy) are decided on a paired bootstrap interval
(``evals.stats``): PASS only when the whole interval is on the safe side, FAIL
when the whole interval is on the wrong side, INCONCLUSIVE otherwise, with an
estimate of how many examples would settle it. Cost gates (weights, decode
speed, TTFT) are plain comparisons, and SKIPPED where the scheme's cost numbers
do not represent the target (emulated kernels, another device).

Verdicts: PASS, FAIL, INCONCLUSIVE, SKIPPED (gates) and BASELINE (the reference
scheme, which is not gated).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evals import stats
from pipelines.errors import QevalError

log = logging.getLogger(__name__)

PASS = stats.PASS
FAIL = stats.FAIL
INCONCLUSIVE = stats.INCONCLUSIVE
SKIPPED = "SKIPPED"
BASELINE = "BASELINE"

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_INCONCLUSIVE = 3  # 2 is the CLI's code for bad input

NonNegative = Annotated[float, Field(ge=0)]


class BatchThreshold(BaseModel):
    """A threshold on a speed measurement taken at one batch size."""

    model_config = ConfigDict(extra="forbid")

    bs: int = Field(ge=1, description="Batch size whose measurement is gated.")
    value: float = Field(gt=0, description="Threshold in the gated metric's unit (tok/s or ms).")


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
    acc_min_recovery: Annotated[float, Field(gt=0)] | None = Field(
        default=0.99,
        description="Smallest allowed accuracy recovery (scheme / baseline) on each task; null disables.",
    )
    acc_min_recovery_avg: Annotated[float, Field(gt=0)] | None = Field(
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
    max_weights_gib: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="Largest allowed weights size in GiB; null disables. Cost gate: no interval.",
    )
    min_decode_tok_s: BatchThreshold | None = Field(
        default=None,
        description="Smallest allowed median decode tok/s at a batch size, e.g. {bs: 1, value: 30}.",
    )
    max_ttft_ms_p99: BatchThreshold | None = Field(
        default=None,
        description="Largest allowed p99 time to first token in ms at a batch size, e.g. {bs: 1, value: 200}.",
    )
    confidence: float = Field(
        default=0.95, gt=0, lt=1, description="Coverage of the two-sided bootstrap intervals."
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
    keeps the suite's wikitext2 threshold); anything else replaces the suite
    value, and null disables a gate.
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
    return _validate(_deep_merge(suite, override), "the gates after the model override")


def _validate(data: dict, source: str) -> Gates:
    try:
        return Gates.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise QevalError(
            f"invalid {source}: {problems}. Fix the recipe (see pipelines/gates.py Gates)."
        ) from err


def _deep_merge(base: dict, override: Mapping) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


@dataclass
class SchemeEvidence:
    """Everything the gates need about one scheme, read from its run directory."""

    scheme: str
    perplexity: dict[str, dict] = field(default_factory=dict)  # perplexity.json entries
    task_samples: dict[str, list[dict]] = field(default_factory=dict)  # samples/<task>.jsonl rows
    task_metrics: dict[str, dict] = field(default_factory=dict)  # tasks.json "results"
    weights_gib: float | None = None
    decode_tok_s: dict[int, float] = field(
        default_factory=dict
    )  # batch size -> median decode tok/s
    ttft_ms_p99: dict[int, float] = field(default_factory=dict)  # batch size -> p99 TTFT
    cost_representative: bool = True
    cost_note: str | None = None  # why cost numbers are not representative


@dataclass(frozen=True)
class GateResult:
    """One gate's outcome for one scheme.

    ``baseline``/``value``/``delta`` describe the raw metric (perplexity,
    accuracy as a fraction, GiB, tok/s, ms); ``estimate``/``ci``/``threshold``
    describe the gated quantity (relative increase, recovery, drop in points or
    the raw value for cost gates), compared with ``comparison``.
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
    note: str | None = None

    def to_dict(self) -> dict:
        return {
            "gate": self.gate,
            "metric": self.metric,
            "quantity": self.quantity,
            "comparison": self.comparison,
            "baseline": _json_float(self.baseline),
            "value": _json_float(self.value),
            "delta": _json_float(self.delta),
            "estimate": _json_float(self.estimate),
            "ci": None if self.ci is None else [_json_float(self.ci[0]), _json_float(self.ci[1])],
            "threshold": self.threshold,
            "verdict": self.verdict,
            "n": self.n,
            "n_needed": self.n_needed,
            "note": self.note,
        }


@dataclass(frozen=True)
class SchemeVerdict:
    """A scheme's overall verdict and the gate results behind it."""

    scheme: str
    verdict: str
    gates: tuple[GateResult, ...] = ()
    note: str | None = None

    def counts(self) -> dict[str, int]:
        verdicts = [g.verdict for g in self.gates]
        return {v: verdicts.count(v) for v in (PASS, FAIL, INCONCLUSIVE, SKIPPED)}

    def to_dict(self) -> dict:
        return {
            "scheme": self.scheme,
            "verdict": self.verdict,
            "counts": self.counts(),
            "note": self.note,
            "gates": [g.to_dict() for g in self.gates],
        }


def evaluate_scheme(
    baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates
) -> SchemeVerdict:
    """Evaluate every applicable gate for ``scheme`` against ``baseline``."""
    if scheme.scheme == baseline.scheme:
        return SchemeVerdict(scheme.scheme, BASELINE, note="reference scheme; not gated")
    results = [
        *_perplexity_gates(baseline, scheme, gates),
        *_accuracy_gates(baseline, scheme, gates),
        *_cost_gates(baseline, scheme, gates),
    ]
    verdict, note = _combine(results)
    log.info("scheme %s: %s", scheme.scheme, verdict)
    return SchemeVerdict(scheme.scheme, verdict, tuple(results), note)


def signoff(baseline: SchemeEvidence, schemes: list[SchemeEvidence], gates: Gates) -> dict:
    """Evaluate all schemes and return the JSON-able content of signoff.json."""
    candidates = [s for s in schemes if s.scheme != baseline.scheme]
    names = [s.scheme for s in candidates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise QevalError(f"scheme names must be unique; repeated: {', '.join(duplicates)}")
    if not candidates:
        raise QevalError(
            f"nothing to sign off: no scheme besides the baseline {baseline.scheme!r}; "
            "add quantized schemes to the sweep"
        )
    verdicts = [evaluate_scheme(baseline, baseline, gates)]
    verdicts += [evaluate_scheme(baseline, s, gates) for s in candidates]
    gated = [v.verdict for v in verdicts if v.verdict != BASELINE]
    code = exit_code(gated)
    return {
        "baseline": baseline.scheme,
        "overall": {EXIT_PASS: PASS, EXIT_FAIL: FAIL, EXIT_INCONCLUSIVE: INCONCLUSIVE}[code],
        "exit_code": code,
        "verdicts": {v.scheme: v.verdict for v in verdicts},
        "schemes": [v.to_dict() for v in verdicts],
        "confidence": gates.confidence,
        "n_resamples": gates.n_resamples,
        "seed": gates.seed,
        "method": (
            f"paired percentile bootstrap ({gates.n_resamples} resamples, seed {gates.seed}, "
            f"{gates.confidence:.0%} two-sided intervals): examples paired by doc_id, perplexity "
            "windows paired by position; PASS needs the whole interval on the safe side of the threshold"
        ),
        "gates_config": gates.model_dump(mode="json"),
    }


def exit_code(verdicts: Iterable[str]) -> int:
    """Return 1 if any verdict failed, 3 if any is inconclusive (and none failed), else 0."""
    verdicts = list(verdicts)
    if FAIL in verdicts:
        return EXIT_FAIL
    if INCONCLUSIVE in verdicts:
        return EXIT_INCONCLUSIVE
    return EXIT_PASS


def _combine(results: list[GateResult]) -> tuple[str, str | None]:
    applicable = [r.verdict for r in results if r.verdict != SKIPPED]
    if not applicable:
        return INCONCLUSIVE, "no applicable gate: nothing supports a PASS"
    if FAIL in applicable:
        return FAIL, None
    if INCONCLUSIVE in applicable:
        return INCONCLUSIVE, None
    return PASS, None


# --- perplexity -------------------------------------------------------------------------------

# Fields that must agree for two perplexity runs to score the same windows.
_WINDOW_IDENTITY = ("token_ids_sha256", "protocol", "seq_len", "stride")


def _perplexity_gates(
    baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates
) -> list[GateResult]:
    results = []
    for dataset, threshold in gates.perplexity_thresholds(baseline.perplexity).items():
        common = dict(
            gate=f"ppl_max_rel_increase[{dataset}]",
            metric=f"ppl.{dataset}",
            quantity="relative increase",
            comparison="<=",
            threshold=threshold,
        )
        base, other = baseline.perplexity.get(dataset), scheme.perplexity.get(dataset)
        missing = _missing_side(
            baseline.scheme if base is None else None, scheme.scheme if other is None else None
        )
        if missing:
            results.append(
                GateResult(
                    **common, verdict=INCONCLUSIVE, note=f"no perplexity on {dataset} for {missing}"
                )
            )
            continue
        _check_same_windows(dataset, baseline.scheme, base, scheme.scheme, other)
        base_ppl, scheme_ppl = _ppl(base), _ppl(other)
        raw = dict(baseline=base_ppl, value=scheme_ppl, delta=_sub(scheme_ppl, base_ppl))
        base_nll, scheme_nll = base.get("window_nll") or [], other.get("window_nll") or []
        if len(base_nll) < 2 or len(scheme_nll) < 2:
            results.append(
                GateResult(
                    **common,
                    **raw,
                    verdict=INCONCLUSIVE,
                    note="fewer than 2 per-window NLLs recorded; re-run perplexity to get window_nll",
                )
            )
            continue
        if len(base_nll) != len(scheme_nll):
            raise QevalError(
                f"perplexity on {dataset}: {baseline.scheme} has {len(base_nll)} windows and "
                f"{scheme.scheme} {len(scheme_nll)}; re-run both with the same protocol and seq_len"
            )
        interval = stats.perplexity_increase_bootstrap(
            base_nll,
            scheme_nll,
            confidence=gates.confidence,
            n_resamples=gates.n_resamples,
            seed=gates.seed,
        )
        results.append(_interval_result(common, raw, interval, upper_bound=True))
    return results


def _check_same_windows(
    dataset: str, base_name: str, base: dict, scheme_name: str, other: dict
) -> None:
    for key in _WINDOW_IDENTITY:
        if key in base and key in other and base[key] != other[key]:
            raise QevalError(
                f"perplexity on {dataset}: {key} differs between {base_name} ({base[key]!r}) and "
                f"{scheme_name} ({other[key]!r}), so the windows cannot be paired; "
                "re-run both with the same data, tokenizer and protocol"
            )


def _ppl(entry: dict) -> float | None:
    if entry.get("ppl") is not None:
        return float(entry["ppl"])
    nll = entry.get("window_nll") or []
    return math.exp(sum(nll) / len(nll)) if nll else None


# --- accuracy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TaskPair:
    metric: str
    baseline: list[float]
    scheme: list[float]
    note: str | None


def _accuracy_gates(
    baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates
) -> list[GateResult]:
    if (
        gates.acc_min_recovery is None
        and gates.acc_max_drop_points is None
        and gates.acc_min_recovery_avg is None
    ):
        return []
    tasks = (
        gates.acc_tasks
        if gates.acc_tasks is not None
        else sorted(set(baseline.task_samples) | set(baseline.task_metrics))
    )
    results: list[GateResult] = []
    pairs: dict[str, _TaskPair] = {}
    unusable: list[str] = []
    for task in tasks:
        pair, problem = _pair_task(task, baseline, scheme, gates.acc_metric)
        if pair is None:
            unusable.append(task)
        else:
            pairs[task] = pair
        results += _task_gates(task, pair, problem, gates)
    if gates.acc_min_recovery_avg is not None and tasks:
        results.append(_average_gate(pairs, unusable, gates))
    return results


def _pair_task(
    task: str, baseline: SchemeEvidence, scheme: SchemeEvidence, wanted_metric: str
) -> tuple[_TaskPair | None, str | None]:
    base_rows, scheme_rows = baseline.task_samples.get(task), scheme.task_samples.get(task)
    missing = _missing_side(
        baseline.scheme if not base_rows else None, scheme.scheme if not scheme_rows else None
    )
    if missing:
        return (
            None,
            f"no per-example samples of {task} for {missing}; re-run tasks with samples logged",
        )
    metric, notes = wanted_metric, []
    if not all(metric in row for row in base_rows):
        if metric == "acc_norm" and all("acc" in row for row in base_rows):
            metric = "acc"
            notes.append(f"{task} has no acc_norm; gated on acc")
        else:
            raise QevalError(
                f"samples of {task} for {baseline.scheme} lack the {metric!r} field on some rows"
            )
    base_by_id = _scores_by_doc(task, baseline.scheme, base_rows, metric)
    scheme_by_id = _scores_by_doc(task, scheme.scheme, scheme_rows, metric)
    common = sorted(set(base_by_id) & set(scheme_by_id))
    if not common:
        raise QevalError(
            f"samples of {task}: {baseline.scheme} and {scheme.scheme} share no doc_id, so they cannot "
            "be paired; evaluate both on the same examples (same data and limit)"
        )
    if len(common) != len(base_by_id) or len(common) != len(scheme_by_id):
        notes.append(
            f"doc_ids differ: paired {len(common)} common examples of {len(base_by_id)} "
            f"({baseline.scheme}) and {len(scheme_by_id)} ({scheme.scheme})"
        )
    pair = _TaskPair(
        metric,
        [base_by_id[i] for i in common],
        [scheme_by_id[i] for i in common],
        "; ".join(notes) or None,
    )
    return pair, None


def _scores_by_doc(task: str, scheme: str, rows: list[dict], metric: str) -> dict[Any, float]:
    scores: dict[Any, float] = {}
    for row in rows:
        if "doc_id" not in row or metric not in row:
            raise QevalError(
                f"samples of {task} for {scheme}: a row lacks 'doc_id' or {metric!r}: {row!r:.200}"
            )
        if row["doc_id"] in scores:
            raise QevalError(
                f"samples of {task} for {scheme}: doc_id {row['doc_id']!r} appears twice"
            )
        scores[row["doc_id"]] = float(row[metric])
    return scores


def _task_gates(
    task: str, pair: _TaskPair | None, problem: str | None, gates: Gates
) -> list[GateResult]:
    metric = f"{pair.metric if pair else gates.acc_metric}.{task}"
    specs = []
    if gates.acc_min_recovery is not None:
        specs.append((f"acc_min_recovery[{task}]", "recovery", ">=", gates.acc_min_recovery))
    if gates.acc_max_drop_points is not None:
        specs.append(
            (f"acc_max_drop_points[{task}]", "drop (points)", "<=", gates.acc_max_drop_points)
        )
    if pair is None:
        return [
            GateResult(
                gate=g,
                metric=metric,
                quantity=q,
                comparison=c,
                threshold=t,
                verdict=INCONCLUSIVE,
                note=problem,
            )
            for g, q, c, t in specs
        ]
    paired = stats.paired_accuracy_bootstrap(
        pair.baseline,
        pair.scheme,
        confidence=gates.confidence,
        n_resamples=gates.n_resamples,
        seed=gates.seed,
    )
    raw = dict(
        baseline=paired.baseline_mean,
        value=paired.scheme_mean,
        delta=paired.scheme_mean - paired.baseline_mean,
    )
    results = []
    for gate, quantity, comparison, threshold in specs:
        common = dict(
            gate=gate, metric=metric, quantity=quantity, comparison=comparison, threshold=threshold
        )
        if quantity == "recovery":
            interval = paired.recovery
        else:  # a drop in points is the negated difference, times 100
            d = paired.difference
            interval = stats.BootstrapInterval(
                -100 * d.estimate,
                -100 * d.hi,
                -100 * d.lo,
                d.n,
                d.confidence,
                d.n_resamples,
                d.seed,
            )
        results.append(
            _interval_result(common, raw, interval, upper_bound=comparison == "<=", note=pair.note)
        )
    return results


def _average_gate(pairs: dict[str, _TaskPair], unusable: list[str], gates: Gates) -> GateResult:
    common = dict(
        gate="acc_min_recovery_avg",
        metric=f"{gates.acc_metric}.avg",
        quantity="average recovery",
        comparison=">=",
        threshold=gates.acc_min_recovery_avg,
    )
    if unusable:
        return GateResult(
            **common,
            verdict=INCONCLUSIVE,
            note=f"average needs every task; no paired samples for {', '.join(unusable)}",
        )
    base_avg = sum(sum(p.baseline) / len(p.baseline) for p in pairs.values()) / len(pairs)
    scheme_avg = sum(sum(p.scheme) / len(p.scheme) for p in pairs.values()) / len(pairs)
    interval = stats.average_recovery_bootstrap(
        [(p.baseline, p.scheme) for p in pairs.values()],
        confidence=gates.confidence,
        n_resamples=gates.n_resamples,
        seed=gates.seed,
    )
    notes = [f"{len(pairs)} task{'s' if len(pairs) != 1 else ''}: {', '.join(pairs)}"] + [
        p.note for p in pairs.values() if p.note
    ]
    raw = dict(baseline=base_avg, value=scheme_avg, delta=scheme_avg - base_avg)
    return _interval_result(common, raw, interval, upper_bound=False, note="; ".join(notes))


# --- cost -------------------------------------------------------------------------------------


def _cost_gates(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> list[GateResult]:
    specs = []
    if gates.max_weights_gib is not None:
        specs.append(
            (
                "max_weights_gib",
                "mem.weights_gib",
                "<=",
                gates.max_weights_gib,
                baseline.weights_gib,
                scheme.weights_gib,
                "weights size",
            )
        )
    if gates.min_decode_tok_s is not None:
        bs = gates.min_decode_tok_s.bs
        specs.append(
            (
                f"min_decode_tok_s[bs{bs}]",
                f"speed.decode_tok_s.bs{bs}",
                ">=",
                gates.min_decode_tok_s.value,
                baseline.decode_tok_s.get(bs),
                scheme.decode_tok_s.get(bs),
                f"decode tok/s at batch size {bs}",
            )
        )
    if gates.max_ttft_ms_p99 is not None:
        bs = gates.max_ttft_ms_p99.bs
        specs.append(
            (
                f"max_ttft_ms_p99[bs{bs}]",
                f"speed.ttft_ms.p99.bs{bs}",
                "<=",
                gates.max_ttft_ms_p99.value,
                baseline.ttft_ms_p99.get(bs),
                scheme.ttft_ms_p99.get(bs),
                f"p99 TTFT at batch size {bs}",
            )
        )
    results = []
    for gate, metric, comparison, threshold, base_value, value, what in specs:
        common = dict(
            gate=gate,
            metric=metric,
            quantity="value",
            comparison=comparison,
            threshold=threshold,
            baseline=base_value,
            value=value,
            delta=_sub(value, base_value),
            estimate=value,
        )
        if not scheme.cost_representative:
            note = scheme.cost_note or "cost numbers are not representative of the target"
            results.append(
                GateResult(**common, verdict=SKIPPED, note=f"not representative: {note}")
            )
        elif value is None:
            results.append(
                GateResult(
                    **common, verdict=INCONCLUSIVE, note=f"no {what} measured for {scheme.scheme}"
                )
            )
        else:
            ok = value <= threshold if comparison == "<=" else value >= threshold
            results.append(GateResult(**common, verdict=PASS if ok else FAIL))
    return results


# --- helpers ----------------------------------------------------------------------------------


def _interval_result(
    common: dict,
    raw: dict,
    interval: stats.BootstrapInterval,
    *,
    upper_bound: bool,
    note: str | None = None,
) -> GateResult:
    threshold = common["threshold"]
    verdict = stats.classify(interval.lo, interval.hi, threshold, upper_bound=upper_bound)
    needed = None
    if verdict == INCONCLUSIVE:
        needed = stats.samples_needed(
            interval.n, interval.estimate, interval.lo, interval.hi, threshold
        )
        if needed is None:
            note = "; ".join(
                filter(
                    None, [note, "estimate equals the threshold: more samples will not settle it"]
                )
            )
    return GateResult(
        **common,
        **raw,
        verdict=verdict,
        estimate=interval.estimate,
        ci=(interval.lo, interval.hi),
        n=interval.n,
        n_needed=needed,
        note=note,
    )


def _missing_side(base_missing: str | None, scheme_missing: str | None) -> str | None:
    return " and ".join(filter(None, [base_missing, scheme_missing])) or None


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _json_float(x: float | None) -> float | str | None:
    # JSON has no infinity; an unbounded recovery (baseline scored 0) is written as a string.
    if x is None or math.isfinite(x):
        return x
    return "inf" if x > 0 else "-inf"
