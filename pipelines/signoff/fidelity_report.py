"""The sign-off report's fidelity tables, from signoff.json's ``fidelity`` block.

Returned as (title, headers, rows, note) so report.py renders them with its own Markdown and
HTML table helpers: KL and top-1 agreement per scheme and dataset beside the noise floor,
and per task the accuracy beside its flips and the smallest change the sample can detect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _f(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def fidelity_tables(signoff: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    block = signoff.get("fidelity") or {}
    tables = []
    kl_rows = []
    for scheme, datasets in (block.get("schemes") or {}).items():
        for dataset, f in datasets.items():
            floor = f.get("floor") or {}
            kl_rows.append([scheme, dataset, _f(f["kl_mean"]), _f(f["kl_p99"]), _f(f["kl_reverse_mean"]),
                            f"{100 * f['top1_agreement']:.2f}%", f"{100 * f['top_k_overlap']:.1f}%",
                            _f(f["delta_nll_mean"]), _f(floor.get("kl_mean")), _f(floor.get("kl_p99")),
                            "—" if floor.get("top1_agreement") is None else f"{100 * floor['top1_agreement']:.2f}%"])
    if kl_rows:
        bound = block.get("bound")
        note = (f"{block.get('method', '')} Noise floor: "
                f"{next((f.get('floor') or {}).get('comparison') for d in block['schemes'].values() for f in d.values() if f.get('floor')) or 'not measured'}.")
        tables.append((f"Distribution fidelity against the baseline (KL {'lower bound' if bound == 'lower' else 'exact'})",
                       ["Scheme", "Dataset", "KL mean", "KL p99", "KL(s||b) mean", "Top-1 agree", "Top-k overlap",
                        "ΔNLL", "Floor KL mean", "Floor KL p99", "Floor top-1"], kl_rows, note))
    flip_rows = []
    for scheme, tasks in (block.get("flips") or {}).items():
        for task, f in tasks.items():
            lo, hi = f["net_ci"]
            flip_rows.append([scheme, task, f"{100 * f['baseline_accuracy']:.1f}", f"{100 * f['scheme_accuracy']:.1f}",
                              str(f["correct_to_wrong"]), str(f["wrong_to_correct"]), f"{100 * f['flip_rate']:.1f}%",
                              f"{100 * f['net_change']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
                              _f(f["mcnemar_p"], 3), str(f["n"]), f"{f['mde_points']:.1f}"])
    if flip_rows:
        mde = block.get("mde_points") or {}
        note = ("Accuracy in points beside the answers that flipped (paired by doc_id): net change with its "
                "paired bootstrap interval and the exact McNemar p-value; 'Detectable' is the smallest net "
                "change (points) this many paired examples can tell from noise. Unpaired, at worst-case "
                "variance: " + "; ".join(f"{t}: {n_pts:.1f} points" for t, n_pts in mde.items()) + ".")
        tables.append(("Flips on tasks", ["Scheme", "Task", "Baseline acc", "Scheme acc", "Correct→wrong",
                                          "Wrong→correct", "Flip rate", "Net (points) [CI]", "McNemar p", "n",
                                          "Detectable (points)"], flip_rows, note))
    gen_rows = []
    for scheme, tasks in (block.get("collapse") or {}).items():
        for task, c in tasks.items():
            gen_rows.append([scheme, task, str(c["n"]), f"{100 * c['exact_match_strict']:.1f}",
                             f"{100 * c['exact_match_flexible']:.1f}", f"{100 * c['strict_flexible_gap']:+.1f}",
                             f"{c['rep_ngram_rate']:.3f}", f"{100 * c['no_number']:.0f}%", f"{100 * c['empty']:.0f}%",
                             f"{100 * c.get('truncated', 0):.0f}%", f"{c.get('mean_gen_tokens', 0):.0f}"])
    if gen_rows:
        tables.append(("Generation: accuracy and collapse detectors",
                       ["Scheme", "Task", "n", "Strict (points)", "Flexible (points)", "Flexible − strict",
                        "Repeated 4-grams", "No number", "Empty", "Truncated", "Mean tokens"], gen_rows,
                       "Exact match with lm-eval's strict (after '####') and flexible (last number) extraction, "
                       "beside the collapse detectors of the generated text (evals/generation.py); compare each "
                       "scheme's row with the baseline's."))
    return tables
