"""A recipe ``name:`` can never leave the runs root.

A user's scheme, model or suite file whose ``name:`` is ``../x`` (or any other unsafe name) is
refused at planning, through the real planning code and the real CLI, with exit 2, a message
that names the file, the bad name and the fix, and nothing written anywhere. Every run path is
also checked to lie under the runs root where it is built (``pipelines.rundir.paths``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines import cli
from pipelines.errors import EXIT_BAD_INPUT, QevalError
from pipelines.execution.plan import SweepOptions, plan
from pipelines.recipes import load_suite
from pipelines.recipes.models import resolve_model
from pipelines.rundir import model_dir, runs_root, scheme_dir

UNSAFE = ["../x", "../../x", "../other-model/gptq", "a/b", "..", ".hidden", "x/../../y", "-dash", "a..b", "/abs"]


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture
def space(tmp_path, monkeypatch) -> Path:
    """tmp_path/work holds the user's files; the runs root is tmp_path/work/runs (absent at first)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(work / "runs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return work


def user_scheme(folder: Path, name: str | None, stem: str = "evil") -> Path:
    data = {"quantizer": "int8-wo", "description": "a user scheme"}
    if name is not None:
        data["name"] = name
    path = folder / "user" / f"{stem}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def sweep(model: str, schemes: list[str] | None = None, suite: str = "smoke") -> SweepOptions:
    return SweepOptions(model=model, schemes=schemes, suite=suite, tasks=[], quiet=True, track=False)


@pytest.mark.parametrize("name", UNSAFE)
def test_a_user_scheme_with_an_unsafe_name_is_refused_by_the_planner(space, tiny_llama_dir, name):
    scheme = user_scheme(space, name)
    before = snapshot(space.parent)
    with pytest.raises(QevalError) as err:
        plan(sweep(str(tiny_llama_dir), [str(scheme)]))
    message = str(err.value)
    assert str(scheme) in message and repr(name) in message and "`name:`" in message, message
    assert snapshot(space.parent) == before
    assert not (space / "runs").exists()


def test_qeval_plan_and_run_exit_2_on_a_scheme_named_dotdot_and_write_nothing(space, tiny_llama_dir, capsys):
    scheme = user_scheme(space, "../x")
    before = snapshot(space.parent)
    for command in (["plan"], ["run", "--quiet", "--no-track"]):
        code = cli.main([*command, "--model", str(tiny_llama_dir), "--schemes", str(scheme), "--suite", "smoke",
                         "--tasks", ""])
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT, err
        assert "'../x'" in err and str(scheme) in err and "name: x" in err, err
    assert snapshot(space.parent) == before  # nothing written: not in runs/, not beside it
    assert not (space / "runs").exists() and not (space / "x").exists()


def test_a_name_taken_from_the_file_name_is_checked_too(space, tiny_llama_dir):
    scheme = user_scheme(space, None, stem="my w4 scheme")
    with pytest.raises(QevalError, match=r"file name .*name: my-w4-scheme"):
        plan(sweep(str(tiny_llama_dir), [str(scheme)]))


def test_a_safe_user_scheme_name_still_plans(space, tiny_llama_dir):
    scheme = user_scheme(space, "my-int8.v2_wo")
    p = plan(sweep(str(tiny_llama_dir), [str(scheme)]))
    assert "my-int8.v2_wo" in p.recipes
    assert scheme_dir(p.model, "my-int8.v2_wo").root.parent.parent == runs_root()


def test_a_user_model_file_with_an_unsafe_name_is_refused(space, tiny_llama_dir):
    path = space / "model.yaml"
    path.write_text(yaml.safe_dump({"name": "../llama-3.1-8b", "source": str(tiny_llama_dir), "dtype": "float32",
                                    "default_suite": "smoke"}))
    with pytest.raises(QevalError, match=r"model\.yaml.*'\.\./llama-3\.1-8b'.*`name:`"):
        plan(sweep(str(path)))
    with pytest.raises(QevalError, match="not a safe recipe name"):
        resolve_model(str(path))
    assert not (space / "runs").exists()


def test_a_user_suite_file_with_an_unsafe_name_is_refused(space, tiny_llama_dir):
    path = space / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "../s", "schemes": ["baseline"]}))
    with pytest.raises(QevalError, match=r"suite\.yaml.*'\.\./s'"):
        plan(sweep(str(tiny_llama_dir), suite=str(path)))


def test_a_shipped_recipe_name_is_not_a_path(space):
    with pytest.raises(QevalError, match="Unknown suite"):
        load_suite("../suites/smoke")


def test_a_model_or_scheme_recipe_with_an_unsafe_name_fails_validation(recipes, space):
    path = recipes / "models" / "evil.yaml"
    path.write_text(yaml.safe_dump({"name": "../../x", "source": "org/model"}))
    with pytest.raises(QevalError, match=r"recipes/models/evil\.yaml: name: name '\.\./\.\./x' is not a safe"):
        resolve_model("evil")


def test_hub_ids_and_folders_get_safe_names(tmp_path, space):
    odd = tmp_path / "..my ckpt..v1"
    odd.mkdir()
    (odd / "config.json").write_text("{}")
    assert resolve_model(str(odd)).name == "my-ckpt.v1"
    assert resolve_model("meta-llama/Llama-3.1-8B").name == "meta-llama--Llama-3.1-8B"  # unchanged


@pytest.mark.parametrize("parts", [("..",), ("../x",), ("m", ".."), ("m", "../../x"), ("m", "a/b"), ("m", ""),
                                   ("m", "/etc"), ("",), (".",)])
def test_every_run_path_is_under_the_runs_root(space, parts):
    with pytest.raises(QevalError, match="runs root"):
        scheme_dir(*parts) if len(parts) == 2 else model_dir(*parts)


def test_run_paths_of_safe_names_are_unchanged(space):
    assert model_dir("m") == runs_root() / "m"
    assert scheme_dir("m", "gptq-w4g128").root == runs_root() / "m" / "gptq-w4g128"
