"""Sign-off stage: judge every scheme against the baseline under the recipe's gates.

Reads only the run directories; writes ``runs/<model>/signoff.{json,md,html}``
and returns the exit code a release pipeline acts on (0 pass, 1 fail,
3 inconclusive).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from evals.data import read_jsonl
from pipelines.environment import git_commit, hardware, library_versions
from pipelines.errors import QevalError
from pipelines.recipes import ResolvedRecipe
from pipelines.rundir import (
    Manifest,
    model_dir,
    read_json,
    scheme_dir,
    write_json_atomic,
    write_text_atomic,
)
from pipelines.signoff import gates as gates_mod

log = logging.getLogger(__name__)


def finished(model: str, scheme: str, stage: str) -> bool:
    return Manifest(scheme_dir(model, scheme)).stage(stage).get("status") == "done"


def evidence(model: str, scheme: str, recipe: ResolvedRecipe) -> gates_mod.SchemeEvidence:
    """Collect what the gates need from one scheme's run directory."""
    sdir = scheme_dir(model, scheme)
    ev = gates_mod.SchemeEvidence(scheme=scheme)
    ppl = sdir.eval_dir / "perplexity.json"
    if ppl.is_file():
        ev.perplexity = read_json(ppl)
    tasks = sdir.eval_dir / "tasks.json"
    if tasks.is_file():
        ev.task_metrics = read_json(tasks).get("results", {})
        for task in ev.task_metrics:
            sample_file = sdir.eval_dir / "samples" / f"{task}.jsonl"
            if sample_file.is_file():
                ev.task_samples[task] = read_jsonl(sample_file)
    memory, speed = sdir.bench_dir / "memory.json", sdir.bench_dir / "speed.json"
    if memory.is_file():
        ev.weights_gib = read_json(memory)["weights_bytes"] / 2**30
    if speed.is_file():
        sp = read_json(speed)
        for row in sp.get("results", []):
            if row.get("status") == "ok":
                ev.decode_tok_s[row["batch_size"]] = row["decode_tok_s"]["median"]
                ev.ttft_ms_p99[row["batch_size"]] = row["ttft_ms"]["p99"]
        device = sp.get("device", "cpu")
        if not sp.get("representative", True):
            ev.cost_representative, ev.cost_note = False, "emulated: the checkpoint ran decompressed"
        elif not str(device).startswith(recipe.model.target_device):
            ev.cost_representative = False
            ev.cost_note = f"measured on {device}, the model's target device is {recipe.model.target_device}"
    return ev


def caveats(model: str, schemes: list[str], recipes: dict[str, ResolvedRecipe]) -> list[str]:
    """What a reader must know before trusting the verdicts."""
    out = []
    base = recipes["baseline"]
    if base.model.already_quantized:
        out.append(
            f"The baseline of {model} was already quantized before dequantization "
            f"({'; '.join(base.model.caveats) or 'see its recipe'}): 4-bit losses are understated and "
            "8-bit schemes look nearly lossless."
        )
    for scheme in schemes:
        qjson = scheme_dir(model, scheme).quantize_json
        if qjson.is_file() and read_json(qjson).get("emulated"):
            out.append(f"{scheme}: cost numbers come from emulation (checkpoint decompressed on load); "
                       "its cost gates are skipped.")
    if base.tasks.limit:
        out.append(f"Tasks ran with a limit ({base.tasks.limit}): accuracy intervals are wide.")
    if base.perplexity.max_windows:
        out.append(f"Perplexity scored only the first {base.perplexity.max_windows} windows.")
    return out


def protocols(model: str, recipe: ResolvedRecipe) -> dict[str, Any]:
    sdir = scheme_dir(model, "baseline")
    out: dict[str, Any] = {}
    ppl = sdir.eval_dir / "perplexity.json"
    if ppl.is_file():
        out["perplexity"] = {
            ds: {k: e.get(k) for k in ("protocol", "seq_len", "stride", "n_windows", "n_tokens")}
            | {"source": e.get("source", {}).get("path"), "sha256": (e.get("source", {}).get("sha256") or "")[:16]}
            for ds, e in read_json(ppl).items()
        }
    tasks = sdir.eval_dir / "tasks.json"
    if tasks.is_file():
        t = read_json(tasks)
        out["tasks"] = {name: {"limit": t.get("limit", {}).get(name), "n": t.get("n_samples", {}).get(name)}
                        for name in t.get("results", {})}
    out["calibration"] = {"calibration": recipe.calibration.model_dump()}
    return out


def run(model: str, schemes: list[str], *, only: list[str] | None = None) -> dict[str, Any]:
    """Write the sign-off report for ``schemes`` and return signoff.json's content."""
    recipes = {}
    for scheme in ["baseline", *schemes]:
        path = scheme_dir(model, scheme).recipe_path
        if path.is_file():
            recipes[scheme] = ResolvedRecipe.from_yaml(path)
    if "baseline" not in recipes or not finished(model, "baseline", "evaluate"):
        raise QevalError(
            f"no evaluated baseline for {model} under {model_dir(model)}: the sign-off compares every scheme with it. "
            f"Run `qeval run --model {model} --schemes baseline` first."
        )
    base_recipe = recipes["baseline"]
    gates = gates_mod.merge_gates(base_recipe.gates, base_recipe.model.gates)
    judged = [s for s in schemes if s != "baseline" and (not only or s in only)]
    ready = [s for s in judged if s in recipes and finished(model, s, "evaluate")]
    missing = sorted(set(judged) - set(ready))
    base_ev = evidence(model, "baseline", base_recipe)
    result = gates_mod.signoff(base_ev, [evidence(model, s, recipes[s]) for s in ready], gates) if ready else {
        "baseline": "baseline", "overall": gates_mod.INCONCLUSIVE, "exit_code": gates_mod.EXIT_INCONCLUSIVE,
        "verdicts": {"baseline": gates_mod.BASELINE}, "schemes": [],
    }
    for scheme in missing:
        status = Manifest(scheme_dir(model, scheme)).data.get("stages", {})
        reason = next((f"{k}: {v.get('status')}" for k, v in status.items() if v.get("status") != "done"), "not run")
        result["verdicts"][scheme] = "FAIL" if "failed" in reason else gates_mod.INCONCLUSIVE
        result.setdefault("not_judged", {})[scheme] = reason
    result["exit_code"] = gates_mod.exit_code(v for s, v in result["verdicts"].items() if s != "baseline")
    result["model"], result["generated_at"] = model, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_report(model, result, base_recipe, [*ready, *missing])
    return result


def write_report(model: str, result: dict, recipe: ResolvedRecipe, schemes: list[str]) -> None:
    from pipelines.signoff.report import render_html, render_markdown

    mdir = model_dir(model)
    context = {
        "model": model,
        "suite": recipe.suite,
        "git_commit": git_commit(),
        "generated_at": result["generated_at"],
        "protocols": protocols(model, recipe),
        "library_versions": library_versions(),
        "hardware": hardware(),
        "caveats": caveats(model, schemes, {"baseline": recipe}),
    }
    result["caveats"] = context["caveats"]
    pareto = _pareto_plot(model, ["baseline", *schemes])
    write_json_atomic(mdir / "signoff.json", result)
    write_text_atomic(mdir / "signoff.md", render_markdown(result, context))
    write_text_atomic(mdir / "signoff.html", render_html(result, context, pareto))


def _pareto_plot(model: str, schemes: list[str]) -> Path | None:
    """The perplexity-vs-weights Pareto plot, drawn from the run directories."""
    from pipelines.signoff.metrics import sweep_rows
    from pipelines.signoff.plots import write_sweep_plots

    return write_sweep_plots(model_dir(model), sweep_rows(model, schemes)).get("ppl_vs_weights")
