"""Concurrent writers: locked read-modify-writes, and two sweeps of one model on one runs directory."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipelines.rundir import Manifest, SchemeDir, update_json

REPO_ROOT = Path(__file__).resolve().parent.parent


def _hammer(root: str, worker: int, n: int) -> None:
    sdir = SchemeDir(Path(root))
    for i in range(n):
        Manifest(sdir).set(f"w{worker}-{i}", i)
        update_json(Path(root) / "sweep.json", lambda d, w=worker, i=i: d.setdefault("seen", []).append(f"{w}-{i}"))


def test_locked_updates_from_several_processes_lose_nothing(tmp_path):
    """Four processes each add 25 keys to one manifest and 25 entries to one sweep.json."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {k for k in manifest if k.startswith("w")} == {f"w{w}-{i}" for w in range(4) for i in range(25)}
    assert sorted(json.loads((tmp_path / "sweep.json").read_text())["seen"]) == sorted(
        f"{w}-{i}" for w in range(4) for i in range(25))
    # Unique temporary names: nothing is left behind but the files and their lock files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "manifest.json.lock", "sweep.json",
                                                          "sweep.json.lock"]


def test_manifest_methods_reread_before_writing(tmp_path):
    """A Manifest object made before another writer's change does not overwrite that change."""
    sdir = SchemeDir(tmp_path)
    stale = Manifest(sdir)
    Manifest(sdir).set("mlflow", {"run_id": "abc"})  # e.g. tracking, in another process
    stale.start("quantize", "k1")
    stale.fail("quantize", "boom")
    data = json.loads(sdir.manifest_path.read_text())
    assert data["mlflow"] == {"run_id": "abc"} and data["stages"]["quantize"]["status"] == "failed"


@pytest.mark.slow  # two sweeps of two schemes in fresh processes: about 5 minutes on 2 busy cores
def test_two_sweeps_of_one_model_at_once(tmp_path, tiny_llama_dir):
    """Both finish; every manifest is intact; each stage of each scheme ran exactly once."""
    runs = tmp_path / "runs"
    env = {**os.environ, "QEVAL_RUNS_DIR": str(runs), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    cmd = [sys.executable, "-m", "pipelines", "run", "--no-track", "--model", str(tiny_llama_dir),
           "--suite", "smoke", "--schemes", "nf4", "--tasks", "", "--set", "perplexity={seq_len: 64, max_windows: 1}",
           "--set", "benchmark={batch_sizes: [1], prompt_lens: [8], gen_lens: [2], iters: 1, warmup: 0, min_time_s: 0}",
           "--set", "serve={enabled: false}"]  # recorded as skipped: the serve stage is not what this tests
    procs = [subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode in (0, 1, 3), out[-4000:]  # the sweep finished, whatever the verdict

    model = Path(tiny_llama_dir).name
    sweep = json.loads((runs / model / "sweep.json").read_text())
    assert sweep["schemes"] == ["baseline", "nf4"] and "finished_at" in sweep
    for scheme in ("baseline", "nf4"):
        manifest = json.loads((runs / model / scheme / "manifest.json").read_text())
        assert manifest["sweep_id"] == sweep["sweep_id"]
        assert {s: e["status"] for s, e in manifest["stages"].items()} == {
            **dict.fromkeys(("quantize", "evaluate", "benchmark"), "done"), "serve": "skipped"}
        for entry in manifest["stages"].values():
            assert all((runs / model / scheme / out).exists() for out in entry.get("outputs", []))  # a skipped stage has none
    started = Counter(re.findall(r"/(baseline|nf4): (quantize|evaluate|benchmark) started", "".join(outputs)))
    assert started == Counter({(s, st): 1 for s in ("baseline", "nf4") for st in ("quantize", "evaluate", "benchmark")}), started
    leftovers = [p for p in runs.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert not leftovers
