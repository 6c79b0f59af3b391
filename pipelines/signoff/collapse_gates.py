"""Collapse gate: a scheme whose generations degenerate while its log-likelihood scores look fine.

For every generative task both schemes ran (rows with ``rep_ngram_rate``, see
``evals.generation``), each detector is compared with the baseline on the same examples
(paired by ``doc_id``): the mean per-example increase of the repeated 4-gram rate, of the
share of answers with no extractable number, and of the share of empty or truncated answers.
The gate bounds the largest of them, with a bootstrap interval over examples.
"""

from __future__ import annotations

from evals import fidelity_stats
from pipelines.signoff.evidence import SchemeEvidence
from pipelines.signoff.gates import Gates
from pipelines.signoff.outcome import INCONCLUSIVE, GateResult, interval_result

DETECTORS = {
    "rep_ngram_rate": lambda r: float(r.get("rep_ngram_rate", 0.0)),
    "no_number": lambda r: float(r.get("no_number", 0)),
    "empty_or_truncated": lambda r: float(bool(r.get("empty")) or bool(r.get("truncated"))),
}


def generative_tasks(ev: SchemeEvidence) -> list[str]:
    return sorted(t for t, rows in ev.task_samples.items() if rows and "rep_ngram_rate" in rows[0])


def collapse_gates(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> list[GateResult]:
    threshold = gates.collapse_max_increase
    if threshold is None:
        return []
    results = []
    for task in generative_tasks(baseline):
        base = {r["doc_id"]: r for r in baseline.task_samples[task]}
        mine = {r["doc_id"]: r for r in scheme.task_samples.get(task) or []}
        common = sorted(set(base) & set(mine))
        for name, value in DETECTORS.items():
            spec = dict(gate=f"collapse_max_increase[{task}.{name}]", metric=f"collapse.{name}.{task}",
                        quantity=f"increase of {name} over the baseline", comparison="<=", threshold=threshold)
            if not common:
                results.append(GateResult(**spec, verdict=INCONCLUSIVE,
                                          note=f"no generations of {task} for {scheme.scheme} paired with the baseline's"))
                continue
            b = [value(base[i]) for i in common]
            s = [value(mine[i]) for i in common]
            diffs = [y - x for x, y in zip(b, s, strict=True)]
            interval = fidelity_stats.weighted_mean_bootstrap(diffs, [1] * len(diffs), confidence=gates.confidence,
                                                              n_resamples=gates.n_resamples, seed=gates.seed)
            raw = dict(baseline=sum(b) / len(b), value=sum(s) / len(s), delta=sum(diffs) / len(diffs))
            results.append(interval_result(spec, raw, interval, upper_bound=True,
                                           dataset_size=baseline.task_sizes.get(task)))
    return results
