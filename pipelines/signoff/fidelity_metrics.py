"""Stable metric names of the fidelity figures and the answer flips (MLflow, compare, plots).

``fidelity.*`` come from the scheme's own ``eval/fidelity.json``; ``flips.*`` pair the
scheme's task samples with its model's ``baseline`` samples (the sibling run directory), so
they are absent for the baseline itself and wherever either side kept no samples.
"""

from __future__ import annotations

import math

from evals.data import read_jsonl
from evals.flips import count_flips
from evals.results import FidelityFile, TasksResult
from pipelines.rundir import SchemeDir

BASELINE_SCHEME = "baseline"

FIDELITY_METRIC_NAMES: dict[str, tuple[str, str]] = {
    "fidelity.kl_mean.<dataset>": ("eval/fidelity.json", "mean per-token KL(baseline||scheme), nats (top-k: a lower bound)"),
    "fidelity.kl_p99.<dataset>": ("eval/fidelity.json", "p99 of per-token KL(baseline||scheme), nats"),
    "fidelity.kl_reverse_mean.<dataset>": ("eval/fidelity.json", "mean per-token KL(scheme||baseline), nats"),
    "fidelity.top1_agreement.<dataset>": ("eval/fidelity.json", "share of positions whose top token is the baseline's"),
    "fidelity.top_k_overlap.<dataset>": ("eval/fidelity.json", "mean overlap of the scheme's and the baseline's top-10 tokens"),
    "fidelity.delta_nll.<dataset>": ("eval/fidelity.json", "mean NLL of the true token, scheme minus baseline, nats"),
    "fidelity.floor.kl_mean.<dataset>": ("eval/fidelity.json", "noise floor: mean KL of the baseline in another dtype"),
    "fidelity.floor.top1_agreement.<dataset>": ("eval/fidelity.json", "noise floor: top-1 agreement of the baseline in another dtype"),
    "flips.rate.<task>": ("baseline + scheme samples", "share of examples whose correctness differs from the baseline's"),
    "flips.correct_to_wrong.<task>": ("baseline + scheme samples", "examples right for the baseline, wrong for the scheme"),
    "flips.wrong_to_correct.<task>": ("baseline + scheme samples", "examples wrong for the baseline, right for the scheme"),
    "flips.mcnemar_p.<task>": ("baseline + scheme samples", "exact McNemar p-value of the net change"),
}


def _put(out: dict[str, float], name: str, value) -> None:
    if value is not None and math.isfinite(float(value)):
        out[name] = float(value)


def fidelity_metrics(sdir: SchemeDir) -> dict[str, float]:
    out: dict[str, float] = {}
    fid = FidelityFile.read_if_present(sdir.eval_dir / FidelityFile.FILE)
    for d, f in (fid.datasets if fid else {}).items():
        _put(out, f"fidelity.kl_mean.{d}", f["kl_base_scheme"]["mean"])
        _put(out, f"fidelity.kl_p99.{d}", f["kl_base_scheme"]["p99"])
        _put(out, f"fidelity.kl_reverse_mean.{d}", f["kl_scheme_base"]["mean"])
        _put(out, f"fidelity.top1_agreement.{d}", f["top1_agreement"])
        _put(out, f"fidelity.top_k_overlap.{d}", f["top_k_overlap"])
        _put(out, f"fidelity.delta_nll.{d}", f["delta_nll_mean"])
        floor = (fid.noise_floor or {}).get(d)
        if floor:
            _put(out, f"fidelity.floor.kl_mean.{d}", floor["kl_base_scheme"]["mean"])
            _put(out, f"fidelity.floor.top1_agreement.{d}", floor["top1_agreement"])
    out.update(flip_metrics(sdir))
    return out


def _samples(sdir: SchemeDir) -> dict[str, list[dict]]:
    tasks = TasksResult.read_if_present(sdir.eval_dir / TasksResult.FILE)
    out = {}
    for task, rel in (tasks.samples if tasks else {}).items():
        if (sdir.eval_dir / rel).is_file():
            out[task] = read_jsonl(sdir.eval_dir / rel)
    return out


def flip_metrics(sdir: SchemeDir) -> dict[str, float]:
    base_dir = SchemeDir(sdir.root.parent / BASELINE_SCHEME)
    if sdir.root.name == BASELINE_SCHEME or not base_dir.root.is_dir():
        return {}
    base, mine, out = _samples(base_dir), _samples(sdir), {}
    for task, rows in mine.items():
        brows = base.get(task)
        if not brows or not all("acc" in r and "doc_id" in r for r in rows + brows):
            continue
        try:
            f = count_flips(task, "acc", {r["doc_id"]: float(r["acc"]) for r in brows},
                            {r["doc_id"]: float(r["acc"]) for r in rows}, n_resamples=200)
        except ValueError:
            continue  # no common doc_id: nothing paired to report
        _put(out, f"flips.rate.{task}", f.flip_rate)
        _put(out, f"flips.correct_to_wrong.{task}", f.correct_to_wrong)
        _put(out, f"flips.wrong_to_correct.{task}", f.wrong_to_correct)
        _put(out, f"flips.mcnemar_p.{task}", f.mcnemar_p)
    return out
