"""The Ray executor: same results as the local executor, crash isolation, a real `ray start` cluster."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from pipelines.execution.local import WORKER_BAD_INPUT, WORKER_FAILED, WORKER_OK, run_local  # noqa: E402
from pipelines.execution.plan import SweepOptions, plan, write_plan  # noqa: E402
from pipelines.execution.ray import Cluster, estimate_params, run_ray, task_resources  # noqa: E402
from pipelines.rundir import Manifest, model_dir, read_json, scheme_dir  # noqa: E402

FLAGS = dict(force=False, quiet=True, profile=False)
TINY_OVERRIDES = {
    "benchmark": {"batch_sizes": [1], "iters": 1, "warmup": 0},
    "perplexity": {"max_windows": 2, "seq_len": 64},
}
QE = "quantize+evaluate"


@pytest.fixture(autouse=True)
def no_ray_left_connected(monkeypatch):
    """Every test starts and ends without a Ray connection in this process.

    A local ``ray.init()`` also sets RAY_AUTH_MODE in os.environ; monkeypatch puts it back.
    """
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    if ray.is_initialized():
        ray.shutdown()


def planned_jobs(tiny_llama_dir, runs: Path, monkeypatch, schemes: list[str]) -> list[tuple[str, str]]:
    """Plan a tiny sweep into ``runs`` (which becomes QEVAL_RUNS_DIR) and return its jobs."""
    monkeypatch.setenv("QEVAL_RUNS_DIR", str(runs))
    opts = SweepOptions(model=str(tiny_llama_dir), schemes=schemes, suite="smoke", tasks=[],
                        overrides=TINY_OVERRIDES, quiet=True)
    p = plan(opts)
    write_plan(p, opts)
    return [(p.model, s) for s in p.recipes if s not in p.skipped]


def stage_statuses(model: str, scheme: str) -> dict[str, str]:
    return {k: v.get("status") for k, v in Manifest(scheme_dir(model, scheme)).data["stages"].items()}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def assert_close(a, b, tol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= tol * max(1.0, abs(x)), (x, y)


# ---------------------------------------------------------------------------- resources, no cluster


def test_parameter_estimate_matches_the_instantiated_model(tiny_llama_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    actual = sum(p.numel() for p in model.parameters())
    estimate = estimate_params(config)
    # Norm weights are left out of the estimate; they are a few hundred parameters.
    assert 0.99 * actual <= estimate <= actual


def test_resources_follow_the_recipe_and_the_cluster(tiny_llama_dir, tmp_path, monkeypatch):
    from pipelines.recipes import ResolvedRecipe

    model, _ = planned_jobs(tiny_llama_dir, tmp_path / "runs", monkeypatch, ["baseline"])[0]
    recipe = ResolvedRecipe.from_yaml(scheme_dir(model, "baseline").recipe_path)
    cpu_cluster = Cluster([{"CPU": 2, "memory": 16 * 2**30}, {"CPU": 8, "memory": 16 * 2**30}])
    gpu_cluster = Cluster([{"CPU": 16, "GPU": 4, "memory": 64 * 2**30}])

    qe = task_resources(recipe, cpu_cluster, benchmark=False, memory_gib=3.0)
    assert (qe.num_cpus, qe.num_gpus, qe.memory_bytes) == (8, 0, 3 * 2**30)  # a whole node, as locally
    assert task_resources(recipe, gpu_cluster, benchmark=False, memory_gib=3.0).num_cpus == 1
    bench = task_resources(recipe, cpu_cluster, benchmark=True, memory_gib=3.0)
    assert (bench.num_cpus, bench.num_gpus) == (8, 0)  # the whole of the largest node
    assert task_resources(recipe, gpu_cluster, benchmark=False, memory_gib=3.0).num_gpus == recipe.model.n_gpus
    assert task_resources(recipe, gpu_cluster, benchmark=True, memory_gib=3.0).num_gpus == 1

    recipe.model.resources.cpus = 2
    assert task_resources(recipe, cpu_cluster, benchmark=False, memory_gib=3.0).num_cpus == 2
    recipe.model.resources.gpus = 0.5
    recipe.model.resources.memory_gib = 100.0
    shared = task_resources(recipe, gpu_cluster, benchmark=False, memory_gib=3.0)
    assert shared.num_gpus == 0.5 and shared.memory_bytes == 100 * 2**30
    assert task_resources(recipe, gpu_cluster, benchmark=True, memory_gib=3.0).num_gpus == 1
    assert not gpu_cluster.fits(shared)  # 100 GiB on a 64 GiB node


# ---------------------------------------------------------------------------- against Ray


@pytest.mark.slow  # starts a local Ray instance
def test_a_request_no_node_can_meet_fails_as_bad_input(tiny_llama_dir, tmp_path, monkeypatch):
    jobs = planned_jobs(tiny_llama_dir, tmp_path / "runs", monkeypatch, ["baseline"])
    model = jobs[0][0]
    recipe_path = scheme_dir(model, "baseline").recipe_path
    recipe_path.write_text(recipe_path.read_text().replace("memory_gib: null", "memory_gib: 100000.0"))

    codes = run_ray(jobs, **FLAGS)

    assert codes == {(model, "baseline"): WORKER_BAD_INPUT}
    entry = Manifest(scheme_dir(model, "baseline")).stage("quantize")
    assert entry["status"] == "failed" and "model.resources" in entry["error"]
    assert not ray.is_initialized()  # the local instance it started is shut down


@pytest.mark.slow
def test_ray_gives_the_same_results_as_the_local_executor(tiny_llama_dir, tmp_path, monkeypatch):
    schemes = ["baseline", "nf4"]
    local_jobs = planned_jobs(tiny_llama_dir, tmp_path / "local", monkeypatch, schemes)
    local_codes = run_local(local_jobs, **FLAGS)
    model = local_jobs[0][0]
    local_root = model_dir(model)
    ray_jobs = planned_jobs(tiny_llama_dir, tmp_path / "ray", monkeypatch, schemes)
    ray_codes = run_ray(ray_jobs, **FLAGS)
    ray_root = model_dir(model)

    assert local_jobs == ray_jobs
    assert local_codes == ray_codes == {job: WORKER_OK for job in local_jobs}
    assert files_under(local_root) == files_under(ray_root)
    for scheme in schemes:
        a, b = local_root / scheme, ray_root / scheme
        stages = {k: v["status"] for k, v in read_json(a / "manifest.json")["stages"].items()}
        assert stages == {k: v["status"] for k, v in read_json(b / "manifest.json")["stages"].items()}
        assert set(stages.values()) == {"done"}

        ppl_a, ppl_b = read_json(a / "eval/perplexity.json"), read_json(b / "eval/perplexity.json")
        assert ppl_a.keys() == ppl_b.keys()
        for dataset in ppl_a:
            assert ppl_a[dataset]["token_ids_sha256"] == ppl_b[dataset]["token_ids_sha256"]
            assert_close([ppl_a[dataset]["ppl"]], [ppl_b[dataset]["ppl"]])
            assert_close(ppl_a[dataset]["window_nll"], ppl_b[dataset]["window_nll"])

        if (a / "quantize/layer_errors.csv").is_file():
            rows_a = list(csv.DictReader((a / "quantize/layer_errors.csv").open()))
            rows_b = list(csv.DictReader((b / "quantize/layer_errors.csv").open()))
            assert [r["layer"] for r in rows_a] == [r["layer"] for r in rows_b]
            assert_close([float(r["rel_error"]) for r in rows_a], [float(r["rel_error"]) for r in rows_b])

        qa, qb = read_json(a / "quantize/quantize.json"), read_json(b / "quantize/quantize.json")
        assert qa.keys() == qb.keys()
        assert (qa["disk_bytes"], qa["compression_ratio"]) == (qb["disk_bytes"], qb["compression_ratio"])
        for name in ("speed.json", "memory.json"):  # timings differ; the record must not
            assert read_json(a / "bench" / name).keys() == read_json(b / "bench" / name).keys()
    assert read_json(ray_root / "nf4/quantize/quantize.json")["compression_ratio"] > 1


class KillWhenRunning(threading.Thread):
    """SIGKILL the Ray worker of one task as soon as its stage is recorded as running."""

    def __init__(self, task_name: str, model: str, scheme: str, stage: str, timeout_s: float = 300):
        super().__init__(daemon=True)
        self.title, self.model, self.scheme, self.stage = f"ray::{task_name}", model, scheme, stage
        self.deadline = time.monotonic() + timeout_s
        self.killed_pid: int | None = None

    def run(self) -> None:
        import psutil

        while time.monotonic() < self.deadline and self.killed_pid is None:
            time.sleep(0.05)
            try:
                if Manifest(scheme_dir(self.model, self.scheme)).stage(self.stage).get("status") != "running":
                    continue
            except (OSError, json.JSONDecodeError):
                continue
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmdline = proc.info["cmdline"] or [""]
                if cmdline[0] == self.title:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    self.killed_pid = proc.info["pid"]
                    return


@pytest.mark.slow
def test_a_killed_task_fails_only_its_scheme_and_a_rerun_completes_it(tiny_llama_dir, tmp_path, monkeypatch,
                                                                       caplog):
    jobs = planned_jobs(tiny_llama_dir, tmp_path / "runs", monkeypatch, ["baseline", "nf4"])
    model = jobs[0][0]
    killer = KillWhenRunning(f"qeval:{model}/nf4:{QE}", model, "nf4", "quantize")
    killer.start()

    codes = run_ray(jobs, **FLAGS)
    killer.join(timeout=1)

    assert killer.killed_pid is not None, "the nf4 quantize task was never seen running"
    assert codes == {(model, "baseline"): WORKER_OK, (model, "nf4"): WORKER_FAILED}
    nf4 = Manifest(scheme_dir(model, "nf4"))
    assert nf4.stage("quantize")["status"] == "failed"
    assert "WorkerCrashedError" in nf4.stage("quantize")["error"]
    assert "evaluate" not in nf4.data["stages"] and "benchmark" not in nf4.data["stages"]
    assert set(stage_statuses(model, "baseline").values()) == {"done"}
    baseline_before = Manifest(scheme_dir(model, "baseline")).data["stages"]

    caplog.set_level(logging.INFO, logger="pipelines.execution.ray")
    codes = run_ray(jobs, **FLAGS)

    assert codes == {job: WORKER_OK for job in jobs}
    assert f"{model}/baseline: {QE} up to date" in caplog.text  # no task started for it
    assert f"{model}/nf4: {QE} queued" in caplog.text
    assert set(stage_statuses(model, "nf4").values()) == {"done"}
    assert read_json(scheme_dir(model, "nf4").quantize_json)["compression_ratio"] > 1
    # The baseline's stages were up to date: kept, not rerun.
    assert Manifest(scheme_dir(model, "baseline")).data["stages"] == baseline_before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[int]:
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(text in part for part in proc.info["cmdline"] or []):
            pids.append(proc.info["pid"])
    return pids


@pytest.fixture
def ray_head(monkeypatch):
    """A real `ray start --head` on 127.0.0.1 with token authentication, stopped by the pids it started."""
    import psutil

    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="qray", dir="/tmp")  # short: Ray's socket paths have a length limit
    # The head and this driver both use token authentication (Ray sends the token
    # to an explicit address only when told to).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    ray_cli = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--disable-usage-stats", "--include-dashboard=false", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    started: list = []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, head.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "ray start did not come up in 120 s"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # Everything `ray start` started (GCS, raylet, agents, workers) descends from it;
        # `ray start --block` ignores SIGTERM, so escalate to SIGKILL after a grace period.
        with contextlib.suppress(psutil.NoSuchProcess):
            started = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, sig)
            for proc in started:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(sig)
            _, alive = psutil.wait_procs(started, timeout=10)
            if not alive:
                break
        head.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not [p.pid for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not processes_mentioning(temp_dir), "raylet/GCS processes of the test cluster are still running"


RUN_RAY_SCRIPT = r"""
import json, sys
from pipelines.execution.ray import run_ray
jobs = [tuple(job) for job in json.loads(sys.argv[1])]
codes = run_ray(jobs, force=False, quiet=True, profile=False)
print(json.dumps([[*job, code] for job, code in codes.items()]))
"""


@pytest.mark.slow
def test_sweep_on_a_running_ray_cluster(ray_head, tiny_llama_dir, tmp_path, monkeypatch):
    jobs = planned_jobs(tiny_llama_dir, tmp_path / "runs", monkeypatch, ["baseline"])
    model = jobs[0][0]

    # A fresh driver process, as a user runs it: Ray reads RAY_AUTH_MODE when it is imported.
    out = subprocess.run([sys.executable, "-c", RUN_RAY_SCRIPT, json.dumps(jobs)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "RAY_ADDRESS": ray_head})

    assert out.returncode == 0, out.stderr[-3000:]
    assert "Connected to Ray cluster" in out.stderr and "Started a local Ray instance" not in out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[model, "baseline", WORKER_OK]]
    assert set(stage_statuses(model, "baseline").values()) == {"done"}
    assert read_json(scheme_dir(model, "baseline").eval_dir / "perplexity.json")["wikitext2"]["ppl"] > 1
    assert (scheme_dir(model, "baseline").bench_dir / "speed.json").is_file()


def test_an_unreachable_cluster_is_bad_input(monkeypatch):
    from pipelines.errors import QevalError

    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(QevalError, match="RAY_ADDRESS"):
        run_ray([("m", "baseline")], **FLAGS)
    assert not ray.is_initialized()
