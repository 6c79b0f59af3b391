"""A scheme's verdict from its gates, the sweep's overall verdict, and the exit code.

``signoff`` is the entry: it judges every scheme whose evidence it is given
against the baseline, lists the schemes it was told not to judge (NOT JUDGED,
with the reason), and returns signoff.json's content.

A scheme PASSes when every applicable gate passes; one FAIL fails it; else an
INCONCLUSIVE gate makes it INCONCLUSIVE. SKIPPED gates (cost numbers that do
not represent the target) count for nothing, and a scheme whose every gate was
skipped is INCONCLUSIVE: nothing supports a PASS.

Exit codes (``pipelines.errors``), highest precedence first:

- 4 INCOMPLETE: a requested scheme (or the baseline) is NOT JUDGED. A release
  cannot rely on a sweep that did not finish, whatever the judged ones say.
- 1 FAIL: a judged scheme failed a gate.
- 3 INCONCLUSIVE: no gate failed, but some could not be decided.
- 0 PASS: every judged scheme passed.
- 0 NOTHING TO SIGN OFF: the sweep ran only the baseline (e.g. to check a new task) and it
  finished: nothing failed and nothing was there to judge. A baseline
  that is NOT JUDGED is still 4.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pipelines.errors import EXIT_FAIL, EXIT_INCOMPLETE, EXIT_INCONCLUSIVE, EXIT_PASS, QevalError
from pipelines.signoff.collapse_gates import collapse_gates
from pipelines.signoff.cost import cost_gates
from pipelines.signoff.evidence import SchemeEvidence
from pipelines.signoff.fidelity_gates import fidelity_gates, flip_gates
from pipelines.signoff.gates import Gates
from pipelines.signoff.outcome import (
    BASELINE,
    FAIL,
    INCONCLUSIVE,
    NOT_JUDGED,
    NOTHING_TO_SIGN_OFF,
    PASS,
    SKIPPED,
    GateResult,
)
from pipelines.signoff.quality import accuracy_gates, perplexity_gates
from pipelines.signoff.serving import serve_gates

log = logging.getLogger(__name__)

INCOMPLETE = "INCOMPLETE"  # the overall verdict when a scheme is NOT JUDGED
OVERALL = {EXIT_PASS: PASS, EXIT_FAIL: FAIL, EXIT_INCONCLUSIVE: INCONCLUSIVE, EXIT_INCOMPLETE: INCOMPLETE}
PRECEDENCE = "incomplete (4) > fail (1) > inconclusive (3) > pass (0)"


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


def evaluate_scheme(baseline: SchemeEvidence, scheme: SchemeEvidence, gates: Gates) -> SchemeVerdict:
    """Evaluate every applicable gate for ``scheme`` against ``baseline``."""
    if scheme.scheme == baseline.scheme:
        return SchemeVerdict(scheme.scheme, BASELINE, note="reference scheme; not gated")
    results = [
        *perplexity_gates(baseline, scheme, gates),
        *accuracy_gates(baseline, scheme, gates),
        *cost_gates(baseline, scheme, gates),
        *serve_gates(baseline.serve, scheme.serve, gates),
        *fidelity_gates(baseline, scheme, gates),
        *flip_gates(baseline, scheme, gates),
        *collapse_gates(baseline, scheme, gates),
    ]
    verdict, note = combine(results)
    log.info("scheme %s: %s", scheme.scheme, verdict)
    return SchemeVerdict(scheme.scheme, verdict, tuple(results), note)


def combine(results: list[GateResult]) -> tuple[str, str | None]:
    applicable = [r.verdict for r in results if r.verdict != SKIPPED]
    if not applicable:
        return INCONCLUSIVE, "no applicable gate: nothing supports a PASS"
    if FAIL in applicable:
        return FAIL, None
    if INCONCLUSIVE in applicable:
        return INCONCLUSIVE, None
    return PASS, None


def exit_code(verdicts: Iterable[str]) -> int:
    """The sweep's exit code from its schemes' verdicts: 4 > 1 > 3 > 0 (see the module doc)."""
    verdicts = list(verdicts)
    if NOT_JUDGED in verdicts:
        return EXIT_INCOMPLETE
    if FAIL in verdicts:
        return EXIT_FAIL
    if INCONCLUSIVE in verdicts:
        return EXIT_INCONCLUSIVE
    return EXIT_PASS


def signoff(
    baseline: SchemeEvidence | None,
    schemes: list[SchemeEvidence],
    gates: Gates,
    *,
    not_judged: Mapping[str, str] | None = None,
    baseline_name: str = "baseline",
    order: Sequence[str] | None = None,
) -> dict:
    """Judge ``schemes`` against ``baseline`` and return the JSON-able content of signoff.json.

    ``not_judged`` maps each scheme that must not be judged to the reason. A
    ``baseline`` of None means the baseline itself is not judgeable (its reason
    is ``not_judged[baseline_name]``): every scheme is then NOT JUDGED.
    ``order`` lists the schemes in the order the report shows them.
    """
    not_judged = dict(not_judged or {})
    if baseline is not None:
        baseline_name = baseline.scheme
    candidates = [s for s in schemes if s.scheme != baseline_name]
    names = [s.scheme for s in candidates] + [n for n in not_judged if n != baseline_name]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise QevalError(f"scheme names must be unique; repeated: {', '.join(duplicates)}")
    nothing = not names  # only the baseline ran: a normal use, exit 0 when it finished
    if baseline is None:
        reason = not_judged.get(baseline_name, "the baseline is not judgeable")
        not_judged = {baseline_name: reason} | {
            n: not_judged.get(n, f"the baseline is NOT JUDGED ({reason})") for n in names
        }
        verdicts = []
    else:
        verdicts = [evaluate_scheme(baseline, baseline, gates)]
        verdicts += [evaluate_scheme(baseline, s, gates) for s in candidates]
    verdicts += [SchemeVerdict(n, NOT_JUDGED, note=why) for n, why in not_judged.items()]
    if order is not None:
        rank = {name: i for i, name in enumerate([baseline_name, *order])}
        verdicts.sort(key=lambda v: rank.get(v.scheme, len(rank)))
    code = exit_code(v.verdict for v in verdicts if v.verdict != BASELINE)
    overall = NOTHING_TO_SIGN_OFF if nothing and code == EXIT_PASS else OVERALL[code]
    note = None
    if nothing:
        note = (f"nothing to sign off: the sweep has no scheme besides the baseline {baseline_name!r}"
                + ("; its results are in the run directory. Add quantized schemes to the sweep to judge them."
                   if code == EXIT_PASS else f", and the baseline is NOT JUDGED ({not_judged.get(baseline_name)})."))
        log.info("%s", note)
    return {
        "baseline": baseline_name,
        "overall": overall,
        "exit_code": code,
        "exit_code_precedence": PRECEDENCE,
        "note": note,
        "verdicts": {v.scheme: v.verdict for v in verdicts},
        "not_judged": {v.scheme: v.note for v in verdicts if v.verdict == NOT_JUDGED},
        "schemes": [v.to_dict() for v in verdicts],
        "confidence": gates.confidence,
        "n_resamples": gates.n_resamples,
        "seed": gates.seed,
        "method": (
            f"paired percentile bootstrap ({gates.n_resamples} resamples, seed {gates.seed}, "
            f"{gates.confidence:.0%} two-sided intervals): examples paired by doc_id, perplexity "
            "windows paired by position; PASS needs the whole interval on the safe side of the threshold. "
            "Cost gates compare the measured figure (or its ratio to the baseline's) with the threshold, "
            "only where it was measured on the model's target device by a representative run. Only schemes "
            "whose every stage is done under its current key are judged; the others are NOT JUDGED."
        ),
        "gates_config": gates.model_dump(mode="json"),
    }
