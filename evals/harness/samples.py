"""lm-eval's per-task results and samples, turned into tasks.json's metrics and samples/<task>.jsonl rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evals.harness.definitions import TaskDefinition
from pipelines.rundir import write_text_atomic


def plain(value: Any) -> Any:
    """Return ``value`` with numpy scalars and arrays, tuples and sets made plain JSON values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()  # numpy scalar
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def write_samples(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write sample rows as JSONL, atomically."""
    write_text_atomic(path, "".join(json.dumps(plain(r), default=str) + "\n" for r in rows))


def metric_results(raw: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's per-task results with ",none" stripped; "N/A" stderrs become None."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("alias", "name", "sample_len", "sample_count"):
            continue
        name = key.removesuffix(",none")
        if isinstance(value, str):
            value = None if value.strip().upper() == "N/A" else value
        out[name] = value
    return out


def _gold_index(task: Any, doc: dict[str, Any]) -> Any:
    """The correct choice's index, as lm-eval's ConfigurableTask.process_results finds it."""
    gold = task.doc_to_text(doc) if getattr(task, "multiple_input", 0) else task.doc_to_target(doc)
    if isinstance(gold, str):
        choices = task.doc_to_choice(doc)
        return choices.index(gold) if gold in choices else gold
    return gold


def sample_rows(task: Any, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per document: target, prediction, per-sample metrics and log-likelihoods."""
    if not samples:
        return []
    first_filter = samples[0].get("filter", "none")
    wanted = "none" if any(s.get("filter") == "none" for s in samples) else first_filter
    output_type = task.get_config("output_type") if task is not None else None
    if output_type == "generate_until":  # every filter's answer per document, and collapse detectors
        from evals.generation import generation_rows

        return generation_rows(samples)
    rows = []
    for s in sorted(
        (s for s in samples if s.get("filter", "none") == wanted), key=lambda s: s["doc_id"]
    ):
        row: dict[str, Any] = {"doc_id": int(s["doc_id"])}
        metrics = {m: s[m] for m in s.get("metrics", []) if m in s}
        resps = s.get("filtered_resps", [])
        if output_type == "multiple_choice":
            lls = [float(r[0]) for r in resps]
            row["target"] = _gold_index(task, s["doc"]) if task is not None else s.get("target")
            row["prediction"] = int(
                max(range(len(lls)), key=lambda i: (lls[i], -i))
            )  # np.argmax: first max
            row.update(
                {
                    m: int(v) if isinstance(v, float) and v in (0.0, 1.0) else v
                    for m, v in metrics.items()
                }
            )
            row["loglikelihoods"] = lls
        elif output_type == "loglikelihood":
            ll, is_greedy = resps[0]
            row["target"] = s.get("target")
            if "acc" in metrics:
                row["acc"] = int(metrics["acc"])
            row["loglikelihood"] = float(ll)
            row["is_greedy"] = bool(is_greedy)
        else:
            row["target"] = s.get("target")
            row["prediction"] = resps[0] if len(resps) == 1 else resps
            row.update(metrics)
        rows.append(row)
    return rows


def task_provenance(
    task: Any, defs: dict[str, TaskDefinition], lm_name: str, prov_by_dataset: dict[str, Any]
) -> Any:
    if lm_name in defs and defs[lm_name].datasets:
        provs = {d: prov_by_dataset[d] for d in defs[lm_name].datasets}
        return next(iter(provs.values())) if len(provs) == 1 else provs
    cfg = task.config if task is not None else None
    return {
        "kind": "lm_eval",
        "dataset_path": getattr(cfg, "dataset_path", None),
        "dataset_name": getattr(cfg, "dataset_name", None),
        "dataset_kwargs": getattr(cfg, "dataset_kwargs", None),
    }
