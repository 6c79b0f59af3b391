"""The ``ray`` executor: a sweep's stage groups as Ray tasks, in parallel on one machine or a cluster.

The same stage functions run as under the ``local`` executor: each task calls
:func:`pipelines.execution.local.run_stages_in_process` for one stage group of one
scheme (quantize+evaluate, then benchmark), in a fresh worker process
(``max_calls=1``), so peak RSS, caches and a native crash stay per task, as
with the local executor's subprocesses.

Order. A scheme's benchmark starts only after its quantize+evaluate succeeded.
Each model's baseline quantize+evaluate runs first; the model's other schemes
fan out when it has finished (they read the baseline's quantize.json for the
compression ratio). Models and schemes are otherwise independent. A group
whose stages are all up to date starts no task (as with the local executor).

Resources per task come from ``model.resources`` in the recipe; where a field is
None it is derived:

* ``cpus``: 1 on a cluster with GPUs (the GPU does the work); on a CPU-only
  cluster as many CPUs as the largest node has, as the local executor's worker
  uses every core. GPTQ's result depends on torch's thread count (Ray sets it to
  a task's CPUs), so this is also what keeps results identical to a local run;
  a smaller ``cpus`` packs more tasks per node, at that price.

* ``gpus``: ``model.n_gpus`` on a cluster with GPUs and a suite device other
  than ``cpu``, else 0.
* ``memory_gib``: parameters (from the model's config) x bytes of the dtype x
  1.5 + 2 GiB. Ray treats it as a scheduling hint, not a limit; if the config
  cannot be read, no memory is requested.
* benchmark tasks ask for whole devices so timings are not shared: on a GPU
  cluster ``max(1, gpus)`` GPUs each; on a CPU-only cluster as many CPUs as
  the largest node has, so nothing else runs beside a benchmark on that node
  (and the benchmark only runs on the largest nodes).

Ray sets OMP_NUM_THREADS to a task's CPUs, so torch in a task uses ``cpus``
threads. Peak RSS recorded inside a
Ray worker includes Ray's own runtime (about 70 MB more than a plain worker).

A request that no alive node can meet fails its scheme at once as bad input
(exit code 2) rather than waiting forever; set ``model.resources`` in the
model recipe to fit the cluster.

Cluster. With ``RAY_ADDRESS`` set, the sweep connects to that cluster; without
it a local Ray instance starts and is shut down at the end. If Ray is already
initialised in this process, that connection is used and left open. ``ray
start`` enables token authentication by default and Ray sends the token only
when told to: connecting to such a cluster needs ``RAY_AUTH_MODE=token`` and the
cluster's token (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN_PATH`` or
``RAY_AUTH_TOKEN``) on the driver. Workers
get the driver's QEVAL_*, HF_*, MLFLOW_*, GPTQMODEL_* and TRANSFORMERS_*
variables (and QEVAL_RUNS_DIR as an absolute path). Every node must have
qeval installed with the same versions and must see the run directories
(QEVAL_RUNS_DIR) and the data directory at the same paths: shared storage.

Failures. A task that dies (worker killed, node out of memory, an exception
outside a stage) fails only its scheme with code 1; the reason is logged and
recorded in the scheme's manifest for the stage that was running, unless the
stage recorded its own failure. Tasks are never retried: rerun the sweep,
finished stages are skipped by key.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from pipelines.execution.local import (
    STAGE_GROUPS,
    WORKER_BAD_INPUT,
    WORKER_FAILED,
    WORKER_OK,
    Job,
    group_is_cached,
)
from pipelines.geometry import estimate_params

log = logging.getLogger(__name__)

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ENV_PREFIXES = ("QEVAL_", "HF_", "HUGGING_FACE_", "MLFLOW_", "GPTQMODEL_", "TRANSFORMERS_")
ENV_NAMES = ("TOKENIZERS_PARALLELISM",)
# The object store only carries exit codes; keep the RAM for the models.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class TaskResources:
    """What one task asks Ray for."""

    num_cpus: float
    num_gpus: float
    memory_bytes: int | None

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            opts["memory"] = self.memory_bytes
        return opts

    def describe(self) -> str:
        memory = f"{self.memory_bytes / GIB:.1f} GiB" if self.memory_bytes else "unspecified"
        return f"cpus={self.num_cpus:g} gpus={self.num_gpus:g} memory={memory}"


@dataclass(frozen=True)
class Cluster:
    """The alive nodes' resources, read once at the start of a sweep."""

    nodes: list[dict[str, float]]

    @property
    def has_gpus(self) -> bool:
        return any(n.get("GPU", 0) > 0 for n in self.nodes)

    @property
    def max_node_cpus(self) -> float:
        return max((n.get("CPU", 0) for n in self.nodes), default=0)

    def fits(self, res: TaskResources) -> bool:
        """Whether some node could run the task on its own."""
        return any(
            n.get("CPU", 0) >= res.num_cpus and n.get("GPU", 0) >= res.num_gpus
            and (not res.memory_bytes or n.get("memory", 0) >= res.memory_bytes)
            for n in self.nodes
        )


def estimate_memory_gib(recipe) -> float | None:
    """Host memory one stage of this model needs: weights x 1.5 + 2 GiB; None if the config is unreadable."""
    from transformers import AutoConfig

    from pipelines.recipes.models import source_path

    model = recipe.model
    try:
        config = AutoConfig.from_pretrained(source_path(model), revision=model.revision,
                                            trust_remote_code=model.trust_remote_code)
        params = estimate_params(config)
    except Exception as exc:  # offline without a cached config, an unusual architecture
        log.warning("%s: cannot estimate its size (%s); no memory is requested from Ray. "
                    "Set model.resources.memory_gib in its recipe.", model.name, exc)
        return None
    return params * DTYPE_BYTES[model.dtype] * 1.5 / GIB + 2


def task_resources(recipe, cluster: Cluster, *, benchmark: bool,
                   memory_gib: float | None) -> TaskResources:
    """The request of one stage group of a scheme (see the module docstring)."""
    res = recipe.model.resources
    gpus = res.gpus
    if gpus is None:
        gpus = recipe.model.n_gpus if cluster.has_gpus and recipe.device != "cpu" else 0
    cpus = res.cpus
    if cpus is None:
        # On CPUs a stage uses every core of its node, as the local executor's
        # worker does; GPTQ's result depends on torch's thread count, so this
        # also keeps results identical to a local run.
        cpus = 1 if gpus > 0 else cluster.max_node_cpus
    if benchmark:
        if gpus > 0:
            gpus = max(1, math.ceil(gpus))
        else:
            cpus = max(cpus, cluster.max_node_cpus)
    memory = res.memory_gib if res.memory_gib is not None else memory_gib
    return TaskResources(num_cpus=cpus, num_gpus=gpus, memory_bytes=int(memory * GIB) if memory else None)


def worker_env() -> dict[str, str]:
    """The driver's environment variables that stages read, for every worker."""
    from pipelines.rundir import runs_root

    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
    env["QEVAL_RUNS_DIR"] = str(runs_root())  # absolute: workers may start in another directory
    return env


def run_group_task(model: str, scheme: str, stages: tuple[str, ...], force: bool, quiet: bool,
                   profile: bool) -> int:
    """The Ray task body: one stage group, with the same setup and exit codes as ``qeval worker``."""
    import ray

    from pipelines.execution.local import run_stages_in_process
    from pipelines.logconfig import configure_logging
    from pipelines.stages.common import BAD_INPUT_ERRORS

    configure_logging(quiet)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, math.floor(cpus))))
    log.info("%s/%s: %s started on %s (pid %d)", model, scheme, "+".join(stages),
             ray.get_runtime_context().get_node_id()[:8], os.getpid())
    try:
        return run_stages_in_process(model, scheme, stages, force=force, quiet=quiet, profile=profile)
    except BAD_INPUT_ERRORS as exc:  # the same classification as the CLI's
        log.error("%s/%s: %s", model, scheme, exc)
        return WORKER_BAD_INPUT


def connect() -> bool:
    """Connect to RAY_ADDRESS, or start a local instance; return whether to shut down at the end."""
    import ray

    if ray.is_initialized():
        return False
    common = dict(log_to_driver=True, namespace="qeval")
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        log.info("starting a local Ray instance")
        ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
        return True
    log.info("connecting to the Ray cluster at %s", address)
    try:
        check_reachable(address)
        ray.init(address=address, **common)
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        from pipelines.errors import QevalError

        raise QevalError(
            f"cannot connect to the Ray cluster at RAY_ADDRESS={address}: {exc}. Check that the head node "
            "runs and the address is reachable. A cluster with token authentication (the default of "
            "`ray start`) also needs RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token, "
            "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN."
        ) from exc
    return True


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", ray://, ...: left to Ray
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address} ({exc})") from exc


def record_crash(model: str, scheme: str, stages: tuple[str, ...], reason: str) -> None:
    """Mark the stage that was running when its task died as failed, unless it recorded that itself."""
    from pipelines.rundir import Manifest, scheme_dir

    manifest = Manifest(scheme_dir(model, scheme))
    for stage in stages:
        status = manifest.stage(stage).get("status")
        if status in ("failed", "skipped"):
            return
        if status != "done":  # running, or not started yet
            manifest.fail(stage, reason)
            return


class Scheduler:
    """Submit stage groups in dependency order and collect one exit code per job."""

    def __init__(self, jobs: list[Job], flags: dict[str, bool]):
        import ray

        from pipelines.recipes import ResolvedRecipe
        from pipelines.rundir import scheme_dir

        self.flags = flags
        self.env = worker_env()
        self.cluster = Cluster([n["Resources"] for n in ray.nodes() if n.get("Alive")])
        self.remote = ray.remote(max_calls=1, max_retries=0)(run_group_task)
        self.recipes = {job: ResolvedRecipe.from_yaml(scheme_dir(*job).recipe_path) for job in jobs}
        memory: dict[str, float | None] = {}
        for (model, _), recipe in self.recipes.items():
            if model not in memory and recipe.model.resources.memory_gib is None:
                memory[model] = estimate_memory_gib(recipe)
        self.memory_gib = memory
        self.codes: dict[Job, int] = {}
        self.pending: dict[Any, tuple[Job, tuple[str, ...], float]] = {}
        # Each model's other schemes wait for its baseline's quantize+evaluate.
        self.waiting: dict[str, list[Job]] = {}
        for job in jobs:
            model, scheme = job
            if scheme != "baseline" and (model, "baseline") in self.recipes:
                self.waiting.setdefault(model, []).append(job)

    def run(self, jobs: list[Job]) -> dict[Job, int]:
        import ray

        for job in jobs:
            if job[0] not in self.waiting or job[1] == "baseline":
                self.submit(job, STAGE_GROUPS[0])
        try:
            while self.pending:
                [ref], _ = ray.wait(list(self.pending), num_returns=1)
                self.collect(ref)
        finally:
            for ref in self.pending:  # interrupted: stop what is still queued or running
                ray.cancel(ref, force=True)
        return {job: self.codes[job] for job in jobs}

    def submit(self, job: Job, stages: tuple[str, ...]) -> None:
        model, scheme = job
        recipe = self.recipes[job]
        res = task_resources(recipe, self.cluster, benchmark="benchmark" in stages or "serve" in stages,
                             memory_gib=self.memory_gib.get(model))
        what = "+".join(stages)
        # Ray gives a task's torch as many threads as the task has CPUs: the keys use that count.
        threads = max(1, math.floor(res.num_cpus))
        if not self.flags["force"] and group_is_cached(model, scheme, stages, threads=threads,
                                                       profile=self.flags["profile"]):
            log.info("%s/%s: %s up to date", model, scheme, what)  # no task, no worker start
            self.finish(job, stages, WORKER_OK)
            return
        if not self.cluster.fits(res):
            reason = (f"no node of the Ray cluster can run {what} with {res.describe()} "
                      f"(nodes: {self.cluster.nodes}). Set model.resources in the model recipe to fit.")
            log.error("%s/%s: %s", model, scheme, reason)
            record_crash(model, scheme, stages, reason)
            self.finish(job, stages, WORKER_BAD_INPUT)
            return
        ref = self.remote.options(
            name=f"qeval:{model}/{scheme}:{what}",
            runtime_env={"env_vars": self.env},
            **res.options(),
        ).remote(model, scheme, stages, self.flags["force"], self.flags["quiet"], self.flags["profile"])
        self.pending[ref] = (job, stages, time.perf_counter())
        log.info("%s/%s: %s queued (%s)", model, scheme, what, res.describe())

    def collect(self, ref) -> None:
        import ray

        job, stages, submitted = self.pending.pop(ref)
        model, scheme = job
        what = "+".join(stages)
        try:
            code = ray.get(ref)
        except ray.exceptions.RayError as exc:
            reason = f"the Ray task running {what} died: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            log.error("%s/%s: %s", model, scheme, reason)
            record_crash(model, scheme, stages, reason)
            code = WORKER_FAILED
        log.info("%s/%s: %s finished with code %d after %.1f s", model, scheme, what, code,
                 time.perf_counter() - submitted)
        self.finish(job, stages, code)

    def finish(self, job: Job, stages: tuple[str, ...], code: int) -> None:
        """Queue what this group unblocks: the scheme's next group, the model's other schemes."""
        model, scheme = job
        next_index = STAGE_GROUPS.index(stages) + 1
        if code == WORKER_OK and next_index < len(STAGE_GROUPS):
            self.submit(job, STAGE_GROUPS[next_index])
        else:
            self.codes[job] = code
        if scheme == "baseline" and stages == STAGE_GROUPS[0]:
            for other in self.waiting.pop(model, []):
                self.submit(other, STAGE_GROUPS[0])


def require_ray() -> None:
    """The Ray extra is optional: without it, EXECUTOR=ray is bad input with the install command."""
    import importlib.util

    from pipelines.errors import QevalError

    if importlib.util.find_spec("ray") is None:
        raise QevalError("EXECUTOR=ray needs the Ray extra, which is not installed: run `make setup RAY=1` "
                         "(or `pip install -e '.[ray]'`), or use EXECUTOR=local.")


def run_ray(jobs: list[Job], *, force: bool, quiet: bool, profile: bool) -> dict[Job, int]:
    """Run every job's stage groups as Ray tasks; a failed task stops only its scheme."""
    require_ray()
    import ray

    if not jobs:
        return {}
    shutdown = connect()
    try:
        return Scheduler(jobs, dict(force=force, quiet=quiet, profile=profile)).run(jobs)
    finally:
        if shutdown:
            ray.shutdown()
