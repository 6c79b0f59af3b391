"""A rerun's eval/ holds only what that rerun measured: no earlier checkpoint's answers are judged.

Before eval/ was built in a staging folder, a rerun with tasks switched off kept the old
tasks.json, and the sign-off judged the new checkpoint on the old checkpoint's answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_keys import SMOKE, env  # noqa: F401  (env: a fixture)


@pytest.fixture
def planned(env):  # noqa: F811  (the fixture imported above)
    """Plan the tiny Llama's baseline on test_keys' runs root, data copy and user task."""
    from pipelines.execution.plan import SweepOptions, plan, write_plan
    from pipelines.recipes import deep_merge

    def plan_with(task_names: list[str]) -> str:
        opts = SweepOptions(model=env["model"], schemes=["baseline"], suite="smoke", tasks=task_names,
                            tasks_dir=str(env["tasks"]), data_dir=str(env["data"]),
                            overrides=deep_merge(SMOKE, {"perplexity": {"fidelity": None}}), quiet=True)
        p = plan(opts)
        write_plan(p, opts)
        return p.model

    return plan_with


def test_a_rerun_without_tasks_leaves_no_old_tasks_file(planned):
    from pipelines.execution.local import run_stages_in_process
    from pipelines.recipes import ResolvedRecipe
    from pipelines.rundir import Manifest, scheme_dir
    from pipelines.signoff.evidence import read_evidence

    model = planned(["my_arc"])
    assert run_stages_in_process(model, "baseline", ("quantize", "evaluate"), quiet=True) == 0
    sdir = scheme_dir(model, "baseline")
    assert (sdir.eval_dir / "tasks.json").is_file()
    assert (sdir.eval_dir / "samples").is_dir()

    planned([])  # the same checkpoint, now evaluated without tasks
    assert run_stages_in_process(model, "baseline", ("evaluate",), quiet=True) == 0
    left = sorted(str(p.relative_to(sdir.eval_dir)) for p in sdir.eval_dir.rglob("*") if p.is_file())
    assert left == ["perplexity.json"]
    outputs = Manifest(sdir).stage("evaluate")["outputs"]
    assert outputs == ["eval/perplexity.json"] and all((sdir.root / o).is_file() for o in outputs)
    evidence = read_evidence(sdir, "baseline", ResolvedRecipe.from_yaml(sdir.recipe_path))
    assert evidence.task_metrics == {} and evidence.task_samples == {}
    # no staging folder is left beside eval/
    assert [p.name for p in sdir.root.iterdir() if p.name.endswith(".partial")] == []


def test_a_failed_rerun_keeps_the_last_finished_eval_folder(planned, monkeypatch):
    from pipelines.execution.local import run_stages_in_process
    from pipelines.rundir import Manifest, scheme_dir
    from pipelines.stages import evaluate

    model = planned(["my_arc"])
    assert run_stages_in_process(model, "baseline", ("quantize", "evaluate"), quiet=True) == 0
    sdir = scheme_dir(model, "baseline")
    before = json.loads((sdir.eval_dir / "perplexity.json").read_text())

    def broken(*args, **kwargs):
        raise RuntimeError("the perplexity pass crashed")

    monkeypatch.setattr(evaluate, "compute_perplexity", broken)
    assert run_stages_in_process(model, "baseline", ("evaluate",), force=True, quiet=True) != 0
    assert Manifest(sdir).stage("evaluate")["status"] == "failed"
    assert json.loads((sdir.eval_dir / "perplexity.json").read_text()) == before
    assert (sdir.eval_dir / "tasks.json").is_file()
    assert not any(Path(p).name.endswith(".partial") for p in map(str, sdir.root.iterdir()))
