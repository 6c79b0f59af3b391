"""Fidelity gates: KL (mean, p99) and top-1 agreement against the baseline, and answer flips.

Decided like the quality gates (``outcome.interval_result``): PASS when the whole bootstrap
interval is on the safe side of the threshold, FAIL when it is wholly on the wrong side,
INCONCLUSIVE otherwise. KL and top-1 intervals resample perplexity windows
(``evals.fidelity_stats``); the flip rate resamples task examples (``evals.flips``). A KL
threshold may be a multiple of the model's noise floor (``{floor_x: m}``), recorded in the
gate's note with the floor it multiplied.
"""

from __future__ import annotations

from typing import Any

from evals import fidelity_stats, stats
from evals.flips import Flips, count_flips
from evals.generation import collapse_summary
from pipelines.signoff.evidence import SchemeEvidence
from pipelines.signoff.gates import FloorMultiple, Gates
from pipelines.signoff.outcome import INCONCLUSIVE, GateResult, interval_result, join_notes


def _threshold(spec: float | FloorMultiple, floor: dict[str, Any] | None, stat: str) -> tuple[float | None, str | None]:
    if not isinstance(spec, FloorMultiple):
        return float(spec), None
    if not floor:
        return None, "threshold is a multiple of the noise floor, and no floor was measured (perplexity.fidelity.noise_floor)"
    value = floor["kl_base_scheme"][stat]
    return spec.floor_x * value, f"{spec.floor_x:g} x noise floor {value:.3g} ({floor.get('comparison', '')})"


def fidelity_gates(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> list[GateResult]:
    specs = [(g, s) for g, s in (("kl_max_mean", gates.kl_max_mean), ("kl_max_p99", gates.kl_max_p99),
                                 ("top1_min_agreement", gates.top1_min_agreement)) if s is not None]
    if not specs:
        return []
    fid = scheme.fidelity
    if fid is None:
        return [GateResult(gate=g, metric=f"fidelity.{g}", quantity=g, comparison=">=" if g.startswith("top1") else "<=",
                           threshold=float(s) if not isinstance(s, FloorMultiple) else s.floor_x, verdict=INCONCLUSIVE,
                           note=f"no eval/fidelity.json for {scheme.scheme}; enable perplexity.fidelity and re-evaluate")
                for g, s in specs]
    results = []
    kw = dict(confidence=gates.confidence, n_resamples=gates.n_resamples, seed=gates.seed)
    bound_note = "KL over the baseline's top-k buckets: a lower bound of the full KL" if fid.bound == "lower" else None
    for dataset, figures in fid.datasets.items():
        floor = (fid.noise_floor or {}).get(dataset)
        for gate, spec in specs:
            if gate == "top1_min_agreement":
                common = dict(gate=f"{gate}[{dataset}]", metric=f"fidelity.top1_agreement.{dataset}",
                              quantity="top-1 agreement", comparison=">=", threshold=float(spec))
                interval = fidelity_stats.weighted_mean_bootstrap(figures["window_top1"], figures["window_tokens"], **kw)
                floor_value = floor["top1_agreement"] if floor else None
                note = f"noise floor {floor_value:.4f}" if floor_value is not None else None
                results.append(interval_result(common, dict(value=figures["top1_agreement"], baseline=floor_value),
                                               interval, upper_bound=False, note=note))
                continue
            stat = "mean" if gate == "kl_max_mean" else "p99"
            threshold, note = _threshold(spec, floor, stat)
            common = dict(gate=f"{gate}[{dataset}]", metric=f"fidelity.kl_{stat}.{dataset}",
                          quantity=f"{stat} KL(base||scheme), nats/token", comparison="<=")
            floor_value = floor["kl_base_scheme"][stat] if floor else None
            raw = dict(value=figures["kl_base_scheme"][stat], baseline=floor_value)
            if threshold is None:
                results.append(GateResult(**common, **raw, threshold=spec.floor_x, verdict=INCONCLUSIVE, note=note))
                continue
            if stat == "mean":
                interval = fidelity_stats.weighted_mean_bootstrap(figures["window_kl_mean"], figures["window_tokens"], **kw)
            elif dataset in scheme.token_kl:
                interval = fidelity_stats.pooled_percentile_bootstrap(scheme.token_kl[dataset], figures["window_tokens"],
                                                                      99, **kw)
            else:
                results.append(GateResult(**common, **raw, threshold=threshold, verdict=INCONCLUSIVE,
                                          note="per-token KL file missing; re-run the evaluate stage"))
                continue
            results.append(interval_result({**common, "threshold": threshold}, raw, interval, upper_bound=True,
                                           note=join_notes(note, bound_note)))
    return results


def task_flips(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> dict[str, Flips]:
    """Flips per task both schemes kept samples of (on acc, or acc_norm where the gates use it)."""
    out = {}
    for task, base_rows in baseline.task_samples.items():
        rows = scheme.task_samples.get(task)
        if not rows:
            continue
        metric = gates.acc_metric if all(gates.acc_metric in r for r in base_rows + rows) else "acc"
        if not all(metric in r and "doc_id" in r for r in base_rows + rows):
            continue
        out[task] = count_flips(task, metric, {r["doc_id"]: float(r[metric]) for r in base_rows},
                                {r["doc_id"]: float(r[metric]) for r in rows},
                                confidence=gates.confidence, n_resamples=gates.n_resamples, seed=gates.seed)
    return out


def flip_gates(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> list[GateResult]:
    if gates.flip_max_rate is None:
        return []
    results = []
    flips = task_flips(baseline, scheme, gates)
    for task in sorted(set(baseline.task_samples) | set(flips)):
        common = dict(gate=f"flip_max_rate[{task}]", metric=f"flips.rate.{task}", quantity="flip rate",
                      comparison="<=", threshold=gates.flip_max_rate)
        f = flips.get(task)
        if f is None:
            results.append(GateResult(**common, verdict=INCONCLUSIVE,
                                      note=f"no paired per-example samples of {task} for {scheme.scheme}"))
            continue
        interval = stats.BootstrapInterval(f.flip_rate, f.flip_rate_ci[0], f.flip_rate_ci[1], f.n, f.confidence,
                                           gates.n_resamples, gates.seed)
        note = (f"{f.correct_to_wrong} correct→wrong, {f.wrong_to_correct} wrong→correct of {f.n}; net "
                f"{100 * f.net_change:+.1f} points (McNemar exact p={f.mcnemar_p:.3g}); detectable change at this n: "
                f"{f.mde_points:.1f} points")
        results.append(interval_result(common, dict(value=f.flip_rate, delta=f.net_change), interval, upper_bound=True,
                                       dataset_size=baseline.task_sizes.get(task), note=note))
    return results


def fidelity_summary(baseline: SchemeEvidence, schemes: list[SchemeEvidence], gates: Gates) -> dict[str, Any]:
    """signoff.json's ``fidelity`` block: per scheme and dataset the headline figures with the
    noise floor beside them, and per scheme and task the flips (the report renders it)."""
    out: dict[str, Any] = {"schemes": {}, "flips": {}, "mde_points": {}}
    for ev in schemes:
        if ev.fidelity is not None:
            out["bound"] = ev.fidelity.bound
            out["method"] = ev.fidelity.method
            out["schemes"][ev.scheme] = {
                d: {"kl_mean": f["kl_base_scheme"]["mean"], "kl_p99": f["kl_base_scheme"]["p99"],
                    "kl_reverse_mean": f["kl_scheme_base"]["mean"], "top1_agreement": f["top1_agreement"],
                    "top_k_overlap": f["top_k_overlap"], "delta_nll_mean": f["delta_nll_mean"],
                    "floor": _floor_figures((ev.fidelity.noise_floor or {}).get(d))}
                for d, f in ev.fidelity.datasets.items()}
        if ev.scheme != baseline.scheme:
            out["flips"][ev.scheme] = {t: f.to_dict() for t, f in task_flips(baseline, ev, gates).items()}
        generated = {t: collapse_summary(rows) for t, rows in ev.task_samples.items() if rows and "rep_ngram_rate" in rows[0]}
        if generated:
            out.setdefault("collapse", {})[ev.scheme] = generated
    from evals.flips import mde_points

    out["mde_points"] = {t: mde_points(len(rows)) for t, rows in baseline.task_samples.items() if rows}
    return out


def _floor_figures(floor: dict[str, Any] | None) -> dict[str, Any] | None:
    if not floor:
        return None
    return {"kl_mean": floor["kl_base_scheme"]["mean"], "kl_p99": floor["kl_base_scheme"]["p99"],
            "top1_agreement": floor["top1_agreement"], "comparison": floor.get("comparison")}
