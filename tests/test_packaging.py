"""A non-editable install: the wheel carries every module and the recipes, and finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_module_and_the_recipes(tmp_path):
    # Build from a copy, so the checkout gets no build/ folder.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO_ROOT / name, src / name)
    for top in ("pipelines", "evals", "recipes"):
        shutil.copytree(REPO_ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__"))
    # Without build isolation: the venv's setuptools, no package index needed.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("qeval-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())

    modules = {p.relative_to(src).as_posix() for top in ("pipelines", "evals") for p in (src / top).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules - names == set(), "add the missing packages to [tool.setuptools] packages in pyproject.toml"
    recipes = {"qeval_recipes/" + p.relative_to(src / "recipes").as_posix() for p in (src / "recipes").rglob("*.yaml")}
    assert recipes and recipes <= names
    assert {n for n in names if n.startswith("evals/tasks/") and n.endswith(".yaml")}

    # Installed on its own (no checkout on the path), it finds the recipes in the package.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # -S: no site-packages processing, so the checkout's editable install is not on the path;
    # the venv's libraries come through PYTHONPATH, after the installed wheel.
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{sysconfig.get_paths()['purelib']}"}
    env.pop("QEVAL_RECIPES_DIR", None)
    code = ("import pipelines, pipelines.recipes as r; print(pipelines.__file__); print(r.RECIPES_DIR); "
            "print(','.join(r.available('suites'))); print(r.load_suite('smoke').name)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    module_file, recipes_dir, suites, smoke = out.stdout.split()
    assert module_file.startswith(str(target)) and recipes_dir == str(target / "qeval_recipes")
    assert {"smoke", "standard"} <= set(suites.split(",")) and smoke == "smoke"

    # QEVAL_RECIPES_DIR still overrides.
    mine = tmp_path / "mine"
    shutil.copytree(src / "recipes", mine)
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env={**env, "QEVAL_RECIPES_DIR": str(mine)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split()[1] == str(mine), out.stderr
