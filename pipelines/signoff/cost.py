"""Cost gates: weights size, decode speed and time to first token, absolute or relative to the baseline.

Cost numbers are single measurements (medians and p99s over the benchmark's
iterations), so a cost gate is a plain comparison, with no interval. It is
SKIPPED, with the reason, when the numbers do not represent the model's target:
measured on another kind of device, or by an emulated run (a checkpoint that
ran decompressed). A relative gate (``*_rel``) also needs the baseline's figure
to be representative and measured on the same device as the scheme's: a ratio
across two machines says nothing about the scheme.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.signoff.evidence import SchemeEvidence
from pipelines.signoff.gates import Gates
from pipelines.signoff.outcome import FAIL, INCONCLUSIVE, PASS, SKIPPED, GateResult, join_notes, sub


@dataclass(frozen=True)
class _Spec:
    gate: str
    metric: str
    comparison: str  # "<=" or ">="
    threshold: float
    baseline: float | None
    value: float | None
    what: str  # for messages: "weights size", "decode tok/s at batch size 1"
    relative: bool
    shape: str | None = None  # the benchmark shape the figure was measured at


def cost_gates(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> list[GateResult]:
    return [_decide(spec, baseline, scheme) for spec in _specs(baseline, scheme, gates)]


def _specs(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> list[_Spec]:
    specs = []
    weights = ("mem.weights_gib", baseline.weights_gib, scheme.weights_gib, "weights size")
    if gates.max_weights_gib is not None:
        specs.append(_Spec("max_weights_gib", weights[0], "<=", gates.max_weights_gib, *weights[1:], relative=False))
    if gates.max_weights_rel is not None:
        specs.append(_Spec("max_weights_rel", weights[0], "<=", gates.max_weights_rel, *weights[1:], relative=True))
    for name, threshold, comparison, relative in (
        ("min_decode_tok_s", gates.min_decode_tok_s, ">=", False),
        ("min_decode_rel", gates.min_decode_rel, ">=", True),
    ):
        if threshold is not None:
            bs = threshold.bs
            specs.append(_Spec(
                f"{name}[bs{bs}]", f"speed.decode_tok_s.{scheme.speed_suffix.get(bs, f'bs{bs}')}", comparison, threshold.value,
                baseline.decode_tok_s.get(bs), scheme.decode_tok_s.get(bs),
                f"decode tok/s at batch size {bs}", relative, scheme.speed_shape.get(bs),
            ))
    for name, threshold, relative in (("max_ttft_ms_p99", gates.max_ttft_ms_p99, False),
                                      ("max_ttft_rel", gates.max_ttft_rel, True)):
        if threshold is not None:
            bs = threshold.bs
            specs.append(_Spec(
                f"{name}[bs{bs}]", f"speed.ttft_ms.p99.{scheme.speed_suffix.get(bs, f'bs{bs}')}", "<=", threshold.value,
                baseline.ttft_ms_p99.get(bs), scheme.ttft_ms_p99.get(bs),
                f"p99 TTFT at batch size {bs}", relative, scheme.speed_shape.get(bs),
            ))
    return specs


def _decide(spec: _Spec, baseline: SchemeEvidence, scheme: SchemeEvidence) -> GateResult:
    ratio = None
    if spec.relative and spec.value is not None and spec.baseline:
        ratio = spec.value / spec.baseline
    common = dict(
        gate=spec.gate,
        metric=spec.metric,
        quantity="ratio to baseline" if spec.relative else "value",
        comparison=spec.comparison,
        threshold=spec.threshold,
        baseline=spec.baseline,
        value=spec.value,
        delta=sub(spec.value, spec.baseline),
        estimate=ratio if spec.relative else spec.value,
    )
    skip = _why_skipped(spec, baseline, scheme)
    if skip:
        return GateResult(**common, verdict=SKIPPED, note=join_notes(skip, spec.shape))
    if spec.value is None:
        return GateResult(**common, verdict=INCONCLUSIVE, note=f"no {spec.what} measured for {scheme.scheme}")
    if spec.relative and ratio is None:
        return GateResult(
            **common, verdict=INCONCLUSIVE, note=f"no {spec.what} measured for the baseline {baseline.scheme}"
        )
    gated = ratio if spec.relative else spec.value
    ok = gated <= spec.threshold if spec.comparison == "<=" else gated >= spec.threshold
    shown = f"{gated:.3g}x the baseline" if spec.relative else f"{gated:.4g}"
    sign = "≤" if spec.comparison == "<=" else "≥"
    note = f"{spec.what}: {shown}, needs {sign} {spec.threshold:g}" + ("x" if spec.relative else "")
    return GateResult(**common, verdict=PASS if ok else FAIL, note=join_notes(note, spec.shape))


def _why_skipped(spec: _Spec, baseline: SchemeEvidence, scheme: SchemeEvidence) -> str | None:
    if not scheme.cost_representative:
        return f"not representative: {scheme.cost_note or 'cost numbers do not represent the target'}"
    if not spec.relative:
        return None
    if not baseline.cost_representative:
        return f"baseline not representative: {baseline.cost_note or 'its cost numbers do not represent the target'}"
    if baseline.cost_device and scheme.cost_device and baseline.cost_device != scheme.cost_device:
        return (
            f"baseline measured on {baseline.cost_device}, {scheme.scheme} on {scheme.cost_device}: "
            "a ratio across devices says nothing about the scheme"
        )
    return None
