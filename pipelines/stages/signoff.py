"""Sign-off stage: judge every scheme against the baseline under the recipe's gates.

Reads only the run directories. A scheme is judged only when every one of its
stages is done under the key it would have now (``stages.keys.stage_keys``);
any other is NOT JUDGED, with the reason, and its files are not read. Writes
``runs/<model>/signoff.{json,md,html}`` and returns signoff.json's content,
whose ``exit_code`` a release pipeline acts on: 4 incomplete > 1 fail >
3 inconclusive > 0 pass (``pipelines.signoff.verdict``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from evals.results import PerplexityFile, QuantizeResult, SpeedResult, TasksResult
from pipelines.environment import git_commit, hardware, library_versions
from pipelines.errors import QevalError
from pipelines.recipes import ResolvedRecipe
from pipelines.rundir import Manifest, model_dir, scheme_dir, write_json_atomic, write_text_atomic
from pipelines.signoff.evidence import read_evidence
from pipelines.signoff.fidelity_gates import fidelity_summary
from pipelines.signoff.gates import merge_gates
from pipelines.signoff.readiness import not_judged_reason
from pipelines.signoff.verdict import signoff
from pipelines.stages.common import StageContext
from pipelines.stages.keys import stage_keys

log = logging.getLogger(__name__)

BASELINE = "baseline"


def judgeable(model: str, scheme: str) -> tuple[ResolvedRecipe | None, str | None]:
    """The scheme's recipe, and why it cannot be judged (None when it can)."""
    sdir = scheme_dir(model, scheme)
    if not sdir.recipe_path.is_file():
        return None, "not run: no recipe in its run directory"
    try:
        ctx = StageContext.from_run_dir(model, scheme)
        # A --profile run records it in the recipe; its benchmark key includes it.
        ctx.profile = bool(ctx.recipe.benchmark.profile)
        # Keys depend on torch's thread count: use the one the stages ran with (a Ray task
        # runs with as many threads as CPUs it was given, not this process's count).
        threads = Manifest(sdir).stage("quantize").get("torch_threads")
        keys = stage_keys(ctx, threads=threads)
    except (QevalError, ValueError, OSError) as exc:
        return None, f"its stage keys cannot be computed: {exc}"
    return ctx.recipe, not_judged_reason(Manifest(sdir), keys)


def run(model: str, schemes: list[str], *, only: list[str] | None = None) -> dict[str, Any]:
    """Write the sign-off report for ``schemes`` and return signoff.json's content."""
    if not scheme_dir(model, BASELINE).recipe_path.is_file():
        raise QevalError(
            f"no baseline for {model} under {model_dir(model)}: the sign-off compares every scheme with it. "
            f"Run `qeval run --model {model} --schemes baseline` first."
        )
    requested = [s for s in schemes if s != BASELINE and (not only or s in only)]
    base_recipe, base_reason = judgeable(model, BASELINE)
    if base_recipe is None:  # the recipe exists but cannot be read: bad input
        raise QevalError(f"the baseline of {model} cannot be read: {base_reason}")
    gates = merge_gates(base_recipe.gates, base_recipe.model.gates)
    not_judged: dict[str, str] = {}
    judged: dict[str, ResolvedRecipe] = {}
    for scheme in requested:
        recipe, reason = judgeable(model, scheme)
        if reason or recipe is None:
            not_judged[scheme] = reason or "not run"
        else:
            judged[scheme] = recipe
    for scheme, reason in not_judged.items():
        log.warning("%s/%s: NOT JUDGED: %s", model, scheme, reason)
    if base_reason:
        log.warning("%s/%s: NOT JUDGED: %s", model, BASELINE, base_reason)
        # Every verdict is relative to the baseline: without it, nothing is judged.
        baseline_gone = f"the baseline is NOT JUDGED ({base_reason})"
        everything = {BASELINE: base_reason} | {s: not_judged.get(s, baseline_gone) for s in requested}
        result = signoff(None, [], gates, not_judged=everything, order=requested)
    else:
        base_ev = read_evidence(scheme_dir(model, BASELINE), BASELINE, base_recipe)
        evidence = [read_evidence(scheme_dir(model, s), s, r) for s, r in judged.items()]
        result = signoff(base_ev, evidence, gates, not_judged=not_judged, order=requested)
        result["fidelity"] = fidelity_summary(base_ev, [base_ev, *evidence], gates)
        from pipelines.signoff import frontier

        result["ship_frontier"] = frontier.build(base_ev, evidence, result, model_dir(model) / _plots_of(report_stem(only)))
    result["model"], result["generated_at"] = model, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if only:
        result["subset_of"] = [s for s in schemes if s != BASELINE]
    shown = [] if base_reason else list(judged)
    write_report(model, result, base_recipe, shown, baseline_judged=not base_reason, stem=report_stem(only))
    return result


def report_stem(only: list[str] | None) -> str:
    """signoff.* for the whole sweep; a subset's sign-off goes beside it, never over it, so the
    sweep's verdict (and the MLflow tags made from it) cannot turn into a subset's PASS."""
    return "signoff" if not only else "signoff-only-" + "+".join(sorted(set(only)))


def _plots_of(stem: str) -> str:
    return "plots" if stem == "signoff" else f"{stem}-plots"


def caveats(model: str, judged: list[str], recipe: ResolvedRecipe) -> list[str]:
    """What a reader must know before trusting the verdicts (of the judged schemes only)."""
    out = []
    if recipe.model.already_quantized:
        out.append(
            f"The baseline of {model} was already quantized before dequantization "
            f"({'; '.join(recipe.model.caveats) or 'see its recipe'}): 4-bit losses are understated and "
            "8-bit schemes look nearly lossless."
        )
    for scheme in judged:
        speed = SpeedResult.read_if_present(scheme_dir(model, scheme).bench_dir / SpeedResult.FILE)
        if speed is not None and not speed.representative:
            out.append(f"{scheme}: cost numbers are not representative ({speed.representative_reason or 'see speed.json'}); "
                       "its cost gates are skipped.")
    other_engine = {}
    for scheme in judged:
        done = QuantizeResult.read_if_present(scheme_dir(model, scheme).quantize_json)
        if done is not None and done.engine:
            other_engine.setdefault(done.engine.get("engine", "another engine"), []).append(scheme)
    for engine, schemes in other_engine.items():
        out.append(f"{', '.join(schemes)}: evaluated, benchmarked and served by {engine}, the baseline by "
                   "transformers: every comparison with the baseline crosses engines. The noise floor "
                   "'gguf-f16' (fidelity) and the gguf-f16 scheme show how much of a difference is the engine alone.")
    out += compute_caveats(model, judged, recipe)
    if recipe.tasks.limit:
        out.append(f"Tasks ran with a limit ({recipe.tasks.limit}): accuracy intervals are wide.")
    if recipe.perplexity.max_windows:
        out.append(f"Perplexity scored only the first {recipe.perplexity.max_windows} windows.")
    return out


def compute_caveats(model: str, judged: list[str], recipe: ResolvedRecipe) -> list[str]:
    """The schemes whose results were computed in another precision than the sweep's, and why;
    and the compute choice's own warnings (a slow dtype kept because float32 would not fit)."""
    choice = recipe.model.compute
    if choice is None:
        return []
    out = list(choice.warnings)
    for scheme in [BASELINE, *judged]:
        done = QuantizeResult.read_if_present(scheme_dir(model, scheme).quantize_json)
        if done is None:
            continue
        compute = done.compute or {}
        computed = compute.get("dtype", done.dtype)
        if done.engine:
            out.append(f"{scheme}: computed by {done.engine.get('engine', 'another engine')} in its own types "
                       f"(weights {done.format}), not in {choice.dtype}.")
        elif computed != choice.dtype:
            out.append(f"{scheme}: computed in {computed}, the sweep in {choice.dtype} "
                       "(a result from another compute choice).")
        elif compute.get("quantize_dtype"):
            out.append(f"{scheme}: quantized in {compute['quantize_dtype']} ({compute.get('quantize_reason')}); "
                       f"loaded, evaluated and served in {choice.dtype} like every scheme.")
    return out


def protocols(model: str, recipe: ResolvedRecipe) -> dict[str, Any]:
    """How the baseline was evaluated (read from its finished results)."""
    sdir = scheme_dir(model, BASELINE)
    out: dict[str, Any] = {}
    ppl = PerplexityFile.read_if_present(sdir.eval_dir / PerplexityFile.FILE)
    if ppl is not None:
        out["perplexity"] = {
            ds: {"protocol": r.protocol, "seq_len": r.seq_len, "stride": r.stride, "n_windows": r.n_windows,
                 "n_tokens": r.n_tokens, "source": r.source.get("path"), "sha256": (r.source.get("sha256") or "")[:16]}
            for ds, r in ppl.datasets.items()
        }
    tasks = TasksResult.read_if_present(sdir.eval_dir / TasksResult.FILE)
    if tasks is not None:
        out["tasks"] = {name: {"limit": tasks.limit.get(name), "n": tasks.n_samples.get(name)} for name in tasks.results}
    out["calibration"] = {"calibration": recipe.calibration.model_dump()}
    return out


def write_report(model: str, result: dict, recipe: ResolvedRecipe, judged: list[str], *,
                 baseline_judged: bool = True, stem: str = "signoff") -> None:
    """Write <stem>.json/md/html. Stale or failed schemes' files feed neither the text nor the plot."""
    from pipelines.signoff.report import render_html, render_markdown

    mdir = model_dir(model)
    context = {
        "model": model,
        "suite": recipe.suite,
        "git_commit": git_commit(),
        "generated_at": result["generated_at"],
        "protocols": protocols(model, recipe) if baseline_judged else {},
        "library_versions": library_versions(),
        "hardware": hardware(),
        "compute": recipe.model.compute.model_dump(exclude={"warnings"}) if recipe.model.compute else None,
        "caveats": caveats(model, judged, recipe) if baseline_judged else [],
    }
    result["caveats"] = context["caveats"]
    pareto = _pareto_plot(mdir / _plots_of(stem), model, [BASELINE, *judged]) if baseline_judged else None
    write_json_atomic(mdir / f"{stem}.json", result)
    write_text_atomic(mdir / f"{stem}.md", render_markdown(result, context))
    write_text_atomic(mdir / f"{stem}.html", render_html(result, context, pareto))


def _pareto_plot(plots: Path, model: str, schemes: list[str]) -> Path | None:
    """The perplexity-vs-weights Pareto plot of the judged schemes, drawn from their run directories."""
    from pipelines.signoff.metrics import sweep_rows
    from pipelines.signoff.plots import write_sweep_plots

    return write_sweep_plots(plots, sweep_rows(model, schemes)).get("ppl_vs_weights")
