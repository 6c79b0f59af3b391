"""Capacity and cost gates from serve/serve.json: a real engine under load, at the SLO.

Like the other cost gates, these count only numbers measured on the model's ``target_device``
by the engine that serves the scheme there (vLLM on CUDA; on CPU the scheme's own engine:
transformers serve or llama.cpp). Anything else (another device, an external endpoint, a scheme
the engine could not serve) makes them SKIPPED with the reason. Relative gates compare with the
baseline's numbers from the same device and engine kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from evals.results import ServeResult
from pipelines.engines import choose_engine
from pipelines.quantizers import get_quantizer
from pipelines.rundir import Manifest, SchemeDir
from pipelines.signoff.outcome import FAIL, INCONCLUSIVE, PASS, SKIPPED, GateResult


@dataclass(frozen=True)
class ServeEvidence:
    """What the serve gates and the ship frontier need about one scheme."""

    capacity: int | None = None  # concurrency at the SLO; 0: not even one stream meets it
    goodput_rps: float | None = None
    usd_per_m: float | None = None  # $ per million output tokens at capacity
    tokens_per_s: float | None = None
    engine: str | None = None
    kv_sequences: int | None = None
    capacity_lower_bound: bool = False  # met the SLO at the highest level tried
    skip: str | None = None  # why these numbers do not count (or do not exist)


def read_serve_evidence(sdir: SchemeDir, quantizer: str, target_device: str) -> ServeEvidence:
    entry = Manifest(sdir).stage("serve")
    if entry.get("status") == "skipped":
        return ServeEvidence(skip=f"not served: {(entry.get('error') or '').splitlines()[0][:200]}")
    result = ServeResult.read_if_present(sdir.serve_dir / ServeResult.FILE)
    if result is None:
        return ServeEvidence(skip="not served (no serve/serve.json)")
    cap, cost = result.capacity, result.cost
    ev = dict(capacity=cap["capacity_concurrency"], goodput_rps=cap["goodput_rps"],
              usd_per_m=cost.get("usd_per_m_output_tokens"), tokens_per_s=cap["output_tokens_per_s_at_capacity"],
              engine=result.engine, kv_sequences=cost.get("concurrent_sequences"),
              capacity_lower_bound=bool(cap.get("lower_bound")))
    target_engine = choose_engine("auto", get_quantizer(quantizer).engine, target_device)
    if result.device_kind != target_device:
        return ServeEvidence(**ev, skip=f"served on {result.device_kind}, the model's target is {target_device}")
    if result.engine != target_engine:
        return ServeEvidence(**ev, skip=f"served by {result.engine}; on {target_device} this scheme's engine is "
                                        f"{target_engine}")
    return ServeEvidence(**ev)


def serve_gates(baseline: ServeEvidence | None, scheme: ServeEvidence | None, gates) -> list[GateResult]:
    """min_capacity, min_capacity_rel and max_usd_per_m_rel, where configured."""
    specs = []
    if gates.min_capacity is not None:
        specs.append(("min_capacity", "serve.capacity", ">=", gates.min_capacity, False))
    if gates.min_capacity_rel is not None:
        specs.append(("min_capacity_rel", "serve.capacity", ">=", gates.min_capacity_rel, True))
    if gates.max_usd_per_m_rel is not None:
        specs.append(("max_usd_per_m_rel", "serve.usd_per_m_output_tokens", "<=", gates.max_usd_per_m_rel, True))
    return [_decide(*spec, baseline or ServeEvidence(skip="baseline not served"),
                    scheme or ServeEvidence(skip="not served")) for spec in specs]


def _decide(gate: str, metric: str, comparison: str, threshold: float, relative: bool, base: ServeEvidence,
            ev: ServeEvidence) -> GateResult:
    capacity = metric == "serve.capacity"
    value = float(ev.capacity) if capacity and ev.capacity is not None else ev.usd_per_m
    base_value = float(base.capacity) if capacity and base.capacity is not None else base.usd_per_m
    common = dict(gate=gate, metric=metric, quantity="ratio to baseline" if relative else "value",
                  comparison=comparison, threshold=threshold, baseline=base_value, value=value)
    skip = ev.skip or (f"baseline: {base.skip}" if relative and base.skip else None)
    if skip:
        return GateResult(**common, verdict=SKIPPED, note=skip)
    if not capacity and ev.capacity == 0:
        return GateResult(**common, verdict=FAIL, note="no load level meets the SLO: cost per token unbounded")
    if value is None:
        return GateResult(**common, verdict=INCONCLUSIVE, note="no price: set hardware.price_per_hour")
    if relative:
        if not base_value:
            return GateResult(**common, verdict=INCONCLUSIVE,
                              note="the baseline has no capacity at the SLO (or no price): no ratio")
        gated = value / base_value
    else:
        gated = value
    ok = gated >= threshold if comparison == ">=" else gated <= threshold
    what = "capacity at the SLO (concurrent streams)" if capacity else "$ per 1M output tokens"
    shown = f"{gated:.3g}x the baseline" if relative else f"{gated:.4g}"
    sign = "≥" if comparison == ">=" else "≤"
    note = f"{what}: {shown}, needs {sign} {threshold:g}{'x' if relative else ''} ({ev.engine})"
    return GateResult(**common, estimate=gated, verdict=PASS if ok else FAIL, note=note)
