"""Quality gates: perplexity increase and task accuracy, decided on paired bootstrap intervals.

A gate PASSes only when its whole interval (``evals.stats``) is on the safe
side of the threshold, FAILs when the whole interval is on the wrong side, and
is INCONCLUSIVE otherwise, with the number of examples that would settle it,
capped at the dataset's size. Perplexity windows are paired by position (same
tokens, checked), task examples by ``doc_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evals import stats
from pipelines.errors import QevalError
from pipelines.signoff.evidence import PerplexityEvidence, SchemeEvidence
from pipelines.signoff.gates import Gates
from pipelines.signoff.outcome import (
    INCONCLUSIVE,
    GateResult,
    interval_result,
    missing_side,
    sub,
)

# --- perplexity -------------------------------------------------------------------------------


def perplexity_gates(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> list[GateResult]:
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
        missing = missing_side(
            baseline.scheme if base is None else None, scheme.scheme if other is None else None
        )
        if missing:
            results.append(
                GateResult(**common, verdict=INCONCLUSIVE, note=f"no perplexity on {dataset} for {missing}")
            )
            continue
        _check_same_windows(dataset, baseline.scheme, base, scheme.scheme, other)
        raw = dict(baseline=base.ppl, value=other.ppl, delta=sub(other.ppl, base.ppl))
        if len(base.window_nll) < 2 or len(other.window_nll) < 2:
            results.append(
                GateResult(
                    **common,
                    **raw,
                    verdict=INCONCLUSIVE,
                    note="fewer than 2 per-window NLLs recorded; re-run perplexity to get window_nll",
                )
            )
            continue
        if len(base.window_nll) != len(other.window_nll):
            raise QevalError(
                f"perplexity on {dataset}: {baseline.scheme} has {len(base.window_nll)} windows and "
                f"{scheme.scheme} {len(other.window_nll)}; re-run both with the same protocol and seq_len"
            )
        interval = stats.perplexity_increase_bootstrap(
            base.window_nll,
            other.window_nll,
            confidence=gates.confidence,
            n_resamples=gates.n_resamples,
            seed=gates.seed,
        )
        results.append(
            interval_result(common, raw, interval, upper_bound=True, dataset_size=base.n_windows_available)
        )
    return results


def _check_same_windows(
    dataset: str, base_name: str, base: PerplexityEvidence, scheme_name: str, other: PerplexityEvidence
) -> None:
    for key in PerplexityEvidence.IDENTITY:
        a, b = getattr(base, key), getattr(other, key)
        if a is not None and b is not None and a != b:
            raise QevalError(
                f"perplexity on {dataset}: {key} differs between {base_name} ({a!r}) and "
                f"{scheme_name} ({b!r}), so the windows cannot be paired; "
                "re-run both with the same data, tokenizer and protocol"
            )


# --- accuracy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TaskPair:
    metric: str
    baseline: list[float]
    scheme: list[float]
    note: str | None


def accuracy_gates(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> list[GateResult]:
    if gates.acc_min_recovery is None and gates.acc_max_drop_points is None and gates.acc_min_recovery_avg is None:
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
        results += _task_gates(task, pair, problem, gates, baseline.task_sizes.get(task))
    if gates.acc_min_recovery_avg is not None and tasks:
        sizes = [baseline.task_sizes.get(t) for t in pairs]
        total = sum(sizes) if sizes and None not in sizes else None
        results.append(_average_gate(pairs, unusable, gates, total))
    return results


def _pair_task(
    task: str, baseline: SchemeEvidence, scheme: SchemeEvidence, wanted_metric: str
) -> tuple[_TaskPair | None, str | None]:
    base_rows, scheme_rows = baseline.task_samples.get(task), scheme.task_samples.get(task)
    missing = missing_side(
        baseline.scheme if not base_rows else None, scheme.scheme if not scheme_rows else None
    )
    if missing:
        return None, f"no per-example samples of {task} for {missing}; re-run tasks with samples logged"
    metric, notes = wanted_metric, []
    if not all(metric in row for row in base_rows):
        if metric == "acc_norm" and all("acc" in row for row in base_rows):
            metric = "acc"
            notes.append(f"{task} has no acc_norm; gated on acc")
        else:
            raise QevalError(f"samples of {task} for {baseline.scheme} lack the {metric!r} field on some rows")
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
            raise QevalError(f"samples of {task} for {scheme}: a row lacks 'doc_id' or {metric!r}: {row!r:.200}")
        if row["doc_id"] in scores:
            raise QevalError(f"samples of {task} for {scheme}: doc_id {row['doc_id']!r} appears twice")
        scores[row["doc_id"]] = float(row[metric])
    return scores


def _task_gates(
    task: str, pair: _TaskPair | None, problem: str | None, gates: Gates, dataset_size: int | None
) -> list[GateResult]:
    metric = f"{pair.metric if pair else gates.acc_metric}.{task}"
    specs = []
    if gates.acc_min_recovery is not None:
        specs.append((f"acc_min_recovery[{task}]", "recovery", ">=", gates.acc_min_recovery))
    if gates.acc_max_drop_points is not None:
        specs.append((f"acc_max_drop_points[{task}]", "drop (points)", "<=", gates.acc_max_drop_points))
    if pair is None:
        return [
            GateResult(gate=g, metric=metric, quantity=q, comparison=c, threshold=t, verdict=INCONCLUSIVE, note=problem)
            for g, q, c, t in specs
        ]
    paired = stats.paired_accuracy_bootstrap(
        pair.baseline, pair.scheme, confidence=gates.confidence, n_resamples=gates.n_resamples, seed=gates.seed
    )
    raw = dict(
        baseline=paired.baseline_mean,
        value=paired.scheme_mean,
        delta=paired.scheme_mean - paired.baseline_mean,
    )
    results = []
    for gate, quantity, comparison, threshold in specs:
        common = dict(gate=gate, metric=metric, quantity=quantity, comparison=comparison, threshold=threshold)
        if quantity == "recovery":
            interval = paired.recovery
        else:  # a drop in points is the negated difference, times 100
            d = paired.difference
            interval = stats.BootstrapInterval(
                -100 * d.estimate, -100 * d.hi, -100 * d.lo, d.n, d.confidence, d.n_resamples, d.seed
            )
        results.append(
            interval_result(
                common, raw, interval, upper_bound=comparison == "<=", dataset_size=dataset_size, note=pair.note
            )
        )
    return results


def _average_gate(
    pairs: dict[str, _TaskPair], unusable: list[str], gates: Gates, dataset_size: int | None
) -> GateResult:
    common = dict(
        gate="acc_min_recovery_avg",
        metric=f"{gates.acc_metric}.avg",
        quantity="average recovery",
        comparison=">=",
        threshold=gates.acc_min_recovery_avg,
    )
    if unusable:
        return GateResult(
            **common, verdict=INCONCLUSIVE, note=f"average needs every task; no paired samples for {', '.join(unusable)}"
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
    return interval_result(
        common, raw, interval, upper_bound=False, dataset_size=dataset_size, note="; ".join(notes)
    )
