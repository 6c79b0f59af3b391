"""The last lines of a sweep: where the report is, and what its verdict means for the reader."""

from __future__ import annotations

from typing import Any

from pipelines.errors import (
    EXIT_BAD_INPUT,
    EXIT_CRASH,
    EXIT_FAIL,
    EXIT_INCOMPLETE,
    EXIT_INCONCLUSIVE,
    EXIT_PASS,
)
from pipelines.rundir import model_dir, scheme_dir

MEANING = {
    EXIT_PASS: "PASS: every judged scheme passed every gate on this evidence.",
    EXIT_FAIL: "FAIL: a scheme failed a gate (table above); the report shows the measured figure and the threshold.",
    EXIT_INCONCLUSIVE: ("INCONCLUSIVE: no gate failed, but some could not be decided on this evidence (the "
                        "confidence interval straddles the threshold); the report says how many examples would "
                        "settle each."),
    EXIT_INCOMPLETE: ("INCOMPLETE: a stage failed or a scheme could not be judged; fix it and rerun "
                      "(finished stages are cached, not redone)."),
    EXIT_BAD_INPUT: "BAD INPUT: part of the request cannot run as asked (notes above); the rest ran.",
    EXIT_CRASH: "CRASH: qeval itself failed (traceback above); this is not a verdict.",
}
# The default model and its suite: too few examples for an accuracy gate to be decided.
DEFAULT_MODEL, QUICK_SUITE = "smollm2-135m", "quick"


def verdict_lines(model: str, signoff: dict[str, Any] | None, exit_code: int) -> list[str]:
    if signoff is not None and signoff.get("overall") == "NOTHING TO SIGN OFF":
        return [f"exit code {exit_code}: NOTHING TO SIGN OFF: {signoff.get('note', 'only the baseline ran')}",
                f"report: {model_dir(model) / 'signoff.html'} (also signoff.md, signoff.json)"]
    lines = [f"exit code {exit_code}: {MEANING.get(exit_code, 'unknown exit code')}"]
    if signoff is not None:
        lines.append(f"report: {model_dir(model) / 'signoff.html'} (also signoff.md, signoff.json)")
    expected = default_model_note(model, exit_code)
    if expected:
        lines.append(expected)
    return lines


def default_model_note(model: str, exit_code: int) -> str | None:
    """On the default model with its quick suite, say why INCONCLUSIVE is the expected verdict."""
    if model != DEFAULT_MODEL or exit_code not in (EXIT_INCONCLUSIVE, EXIT_PASS, EXIT_FAIL):
        return None
    recipe = _baseline_recipe(model)
    if not recipe or recipe.get("suite") != QUICK_SUITE:
        return None
    tasks = recipe.get("tasks") or {}
    limit = tasks.get("limit")
    gates = {**(recipe.get("gates") or {}), **((recipe.get("model") or {}).get("gates") or {})}
    gate = gates.get("acc_min_recovery")
    if isinstance(limit, dict):  # per task: name the largest, the one that settles the most
        limit = max(limit.values(), default=None)
    per_task = f"{limit} examples per task" if isinstance(limit, int) else "the quick suite's sample sizes"
    threshold = f"an accuracy recovery gate of {gate}" if gate else "an accuracy recovery gate"
    return (f"Expected on {DEFAULT_MODEL} with the {QUICK_SUITE} suite: {per_task} give a confidence interval on "
            f"accuracy recovery many points wide, too wide to settle {threshold}, so INCONCLUSIVE is the expected "
            "accuracy verdict; the quick suite checks the pipeline end to end. For a decision, run "
            "SUITE=standard (full task sets) on a model you ship.")


def _baseline_recipe(model: str) -> dict[str, Any] | None:
    import yaml

    path = scheme_dir(model, "baseline").recipe_path
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None
