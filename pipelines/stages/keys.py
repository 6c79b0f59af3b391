"""Every stage key in one place: a stage whose key matches a finished entry is skipped.

A key hashes everything that can change a stage's results, and nothing else:

* quantize: model source/revision/dtype/n_gpus, the scheme, the calibration recipe and the content
  digest of the calibration data (for schemes that read it), the device, torch's thread count
  (GPTQ's checkpoint depends on it), library versions and the digest of the quantize code.
* evaluate: the quantize key, perplexity and task settings, ``max_context``, the content digests of
  the datasets and of the task YAMLs it reads, the device, threads, versions and its code digest.
* benchmark: the quantize key, benchmark settings, the device and its hardware, threads, versions
  and its code digest.

Paths never enter a key: data files and task YAMLs are hashed by content, so moving the data
directory (or a tasks folder) to another path with the same content reruns nothing, while an
edited file reruns what read it. Code digests hash the project's own modules by content, so a
fix to a metric reruns the stage that computes it (and, through the quantize key, a fix to a
quantizer reruns everything downstream of it).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from pipelines.environment import hardware, library_versions
from pipelines.rundir import PROJECT_ROOT, Manifest, stable_hash
from pipelines.stages.common import StageContext, torch_threads

STAGES = ("quantize", "evaluate", "benchmark", "serve")

# evals/ modules only one stage runs (paths relative to evals/; a folder covers its files).
# Every other evals module (data, results, new ones) counts for all three stages: a module
# nobody listed here reruns more than it needs to, never less.
EVALUATE_ONLY = ("perplexity.py", "fidelity.py", "generation.py", "flips.py", "harness", "tasks", "llamacpp_eval.py")
BENCHMARK_ONLY = ("speed.py", "memory.py", "roofline.py", "profiling.py", "kernels.py", "llamacpp_bench.py")
SERVE_ONLY = ("load.py", "capacity.py")
SIGNOFF_ONLY = ("stats.py", "fidelity_stats.py")  # the sign-off is recomputed on every run; no stage key needs it


# ----------------------------------------------------------------------------- content digests


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:  # streamed: a weight shard can be several GB
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _python_files(root: Path, rel: str) -> list[Path]:
    path = root / rel
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts) if path.is_dir() else []


def _under(rel: Path, prefixes: tuple[str, ...]) -> bool:
    return any(rel.parts[: len(Path(p).parts)] == Path(p).parts for p in prefixes)


def _quantizer_modules_of_other_schemes(scheme_quantizer: str) -> set[str]:
    """Files of the registered scheme modules other than this quantizer's (relative to the root)."""
    from pipelines.quantizers import REGISTRY

    def rel(target: str) -> str:
        return target.split(":")[0].replace(".", "/") + ".py"

    own = rel(REGISTRY[scheme_quantizer]) if scheme_quantizer in REGISTRY else None
    return {rel(t) for t in REGISTRY.values()} - {own}


def _engine(quantizer: str) -> str:
    from pipelines.quantizers import REGISTRY, get_quantizer

    return get_quantizer(quantizer).engine if quantizer in REGISTRY else "transformers"


def code_files(stage: str, quantizer: str, root: Path = PROJECT_ROOT) -> list[Path]:
    """The project's own modules whose code can change ``stage``'s results."""
    evals = root / "evals"
    own_only = {"evaluate": EVALUATE_ONLY, "benchmark": BENCHMARK_ONLY, "serve": SERVE_ONLY, "quantize": ()}[stage]
    other_only = tuple(p for p in EVALUATE_ONLY + BENCHMARK_ONLY + SERVE_ONLY + SIGNOFF_ONLY if p not in own_only)
    files = [p for p in _python_files(root, "evals") if not _under(p.relative_to(evals), other_only)]
    files += _python_files(root, f"pipelines/stages/{stage}.py") + _python_files(root, "pipelines/stages/common.py")
    if _engine(quantizer) != "transformers":  # the engine's stage code and its build/conversion code
        files += _python_files(root, "pipelines/stages/engine.py") + _python_files(root, "pipelines/llamacpp")
    if stage == "serve":  # the engines' command lines and process handling
        files += _python_files(root, "pipelines/engines")
    if stage == "quantize":
        others = _quantizer_modules_of_other_schemes(quantizer)
        files += [p for p in _python_files(root, "pipelines/quantizers")
                  if p.relative_to(root).as_posix() not in others]
    return sorted(set(files))


def code_digest(stage: str, quantizer: str, root: Path = PROJECT_ROOT) -> str:
    """sha256 over the contents of :func:`code_files` (named relative to ``root``)."""
    h = hashlib.sha256()
    for path in code_files(stage, quantizer, root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@cache
def _sha256_of_version(path: Path, size: int, mtime_ns: int) -> str:
    """A file's sha256, cached per (path, size, mtime): a file edited in place is hashed again.

    Large files (weights) are also remembered on disk, under the same identity, so that each
    worker process does not hash a 14 GB checkpoint again to compute its keys.
    """
    if size < _REMEMBERED_BYTES:
        return _file_sha256(path)
    from pipelines.recipes.embedded import cache_dir
    from pipelines.rundir.atomic import write_text_atomic

    identity = stable_hash({"path": str(path.resolve()), "size": size, "mtime_ns": mtime_ns,
                            "inode": path.stat().st_ino})
    remembered = cache_dir() / "digests" / identity
    if remembered.is_file():
        return remembered.read_text().strip()
    digest = _file_sha256(path)
    write_text_atomic(remembered, digest)
    return digest


_REMEMBERED_BYTES = 64 * 2**20


def data_digest(names: list[str] | set[str], data_dir: str | None) -> dict[str, str]:
    """Content fingerprint of each named dataset: its local files' sha256, or its Hub id."""
    from evals.data import dataset_fingerprint, resolve_data_dir, spec

    resolved = resolve_data_dir(data_dir)
    out = {}
    for name in sorted(names):
        if resolved is None:
            out[name] = dataset_fingerprint(name, None)
            continue
        # The same files dataset_fingerprint hashes; hashed here with a cache that notices edits
        # (its own is per path, for one stage's lifetime).
        s = spec(name)
        paths = [resolved / rel for rel in filter(None, (s.local_file, s.labels_file))]
        if not all(p.is_file() for p in paths):
            out[name] = dataset_fingerprint(name, resolved)  # raises DataError naming the missing file
            continue
        out[name] = "+".join(_sha256_of_version(p, p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return out


def _includes(path: Path, cfg: dict[str, Any]) -> list[Path]:
    inc = cfg.get("include")
    names = [inc] if isinstance(inc, str) else [i for i in inc or [] if isinstance(i, str)]
    return [Path(n) if Path(n).is_absolute() else path.parent / n for n in names]


def task_digest(names: list[str], tasks_dir: str | None) -> tuple[str | None, set[str]]:
    """Content digest of the task YAMLs the requested tasks read, and the datasets they name.

    Follows group members and ``include:``, and adds the Python files beside each YAML
    (``!function`` helpers). Tasks that are not local (lm-eval's own) are covered by
    lm-eval's version. None when no local task is requested.
    """
    if not names:
        return None, set()
    from evals.harness import TASK_PREFIX, discover_tasks, read_task_yaml

    defs = discover_tasks(Path(tasks_dir).expanduser() if tasks_dir else None)
    todo = [defs.get(n) or defs.get(TASK_PREFIX + n) for n in names]
    seen_tasks: set[str] = set()
    files: set[Path] = set()
    datasets: set[str] = set()
    while todo:
        definition = todo.pop()
        if definition is None or definition.name in seen_tasks:
            continue
        seen_tasks.add(definition.name)
        datasets |= set(definition.datasets)
        todo += [defs.get(m) or defs.get(TASK_PREFIX + m) for m in definition.members]
        stack = [definition.path]
        while stack:
            path = stack.pop().resolve()
            if path in files or not path.is_file():
                continue
            files.add(path)
            files.update(p.resolve() for p in path.parent.glob("*.py"))
            stack += _includes(path, read_task_yaml(path))
    if not files:
        return None, datasets
    return stable_hash(sorted(_file_sha256(p) for p in files)), datasets


# ----------------------------------------------------------------------------- environment parts


def _reads_calibration_data(quantizer) -> bool:
    """Whether the quantize stage reads calibration text for this quantizer: to calibrate, or
    to score per-layer error on held-out windows of the same dataset."""
    calibrates = getattr(quantizer, "calibrates", getattr(quantizer, "needs_calibration", False))
    if calibrates:
        return True
    no_layer_report = getattr(quantizer, "is_reference", False) or getattr(quantizer, "prequantized", False)
    return bool(getattr(quantizer, "measures_layer_errors", True) and not no_layer_report)


# ----------------------------------------------------------------------------- the keys


def compute_identity(ctx: StageContext) -> dict[str, Any]:
    """What of the compute choice changes numbers: the dtype, and the CPU kernels' ISA (the same
    dtype rounds differently on AVX2 and AVX-512 paths). The reason and the probe do not."""
    choice = ctx.recipe.model.compute
    return {"dtype": ctx.compute_dtype, "cpu_capability": choice.cpu_capability if choice else None,
            "native_bf16": choice.native_bf16 if choice else None}  # decides how the noise floor runs


def quantize_key(ctx: StageContext, threads: int | None = None) -> str:
    from pipelines.quantizers import get_quantizer

    recipe = ctx.recipe
    m, s = recipe.model, recipe.scheme
    quantizer = get_quantizer(s.quantizer)
    calibration = None
    if _reads_calibration_data(quantizer):
        cal = recipe.calibration
        calibration = {**cal.model_dump(), "data": data_digest({cal.dataset}, recipe.data_dir)}
    # Another engine's build (llama.cpp's version and flags) changes its checkpoints and numbers;
    # added only for such schemes, so the transformers schemes' keys stay as they were.
    engine = {} if quantizer.engine == "transformers" else {"engine": quantizer.engine_version()}
    return stable_hash({
        **engine,
        "model": {"source": m.source, "revision": m.revision, "dtype": m.dtype, "n_gpus": m.n_gpus},
        # the base weights by content (a local folder updated in place), or the Hub commit the
        # plan resolved the revision to
        "weights": checkpoint_digest(ctx.base_source, m.revision),
        "compute": compute_identity(ctx),
        "scheme": {"quantizer": s.quantizer, "params": s.params, "ignore": s.ignore, "source": s.source},
        "calibration": calibration,
        "device": ctx.device,
        "torch_threads": threads or torch_threads(),
        "versions": library_versions(),
        "code": code_digest("quantize", s.quantizer),
    })


def evaluate_key(ctx: StageContext, threads: int | None = None, quantize: str | None = None) -> str:
    r = ctx.recipe
    tasks = r.tasks.model_dump(exclude={"tasks_dir"})
    task_yamls, task_data = task_digest(r.tasks.names, r.tasks.tasks_dir)
    return stable_hash({
        "quantize": quantize or Manifest(ctx.sdir).stage("quantize").get("key"),
        "perplexity": r.perplexity.model_dump(),
        "tasks": tasks,
        "task_yamls": task_yamls,
        "data": data_digest(set(r.perplexity.datasets) | task_data, r.data_dir),
        "max_context": r.model.max_context,
        "device": ctx.device,
        "torch_threads": threads or torch_threads(),
        "versions": library_versions(),
        "code": code_digest("evaluate", r.scheme.quantizer),
        # fidelity.json depends on the baseline's stored log-probs: their content key per dataset
        "fidelity_reference": {d: reference_key(ctx, d) for d in r.perplexity.datasets
                               if r.perplexity.fidelity.datasets is None or d in r.perplexity.fidelity.datasets}
        if r.perplexity.fidelity else None,
    })


# Weight and tokenizer files that decide a checkpoint's logits (hashed by content).
_CHECKPOINT_FILES = ("*.safetensors", "*.bin", "*.gguf", "config.json", "tokenizer*.json", "*.model", "*.jinja")


def checkpoint_digest(source: str, revision: str | None = None, patterns: tuple[str, ...] = _CHECKPOINT_FILES) -> str:
    """Content digest of a local checkpoint's weights and tokenizer; a Hub id counts by id and revision.

    A file in a Hugging Face cache is a link to a blob named by its content's sha256 (large
    files): the blob's name stands for its content, so a 140 GB model is not read to key it.
    """
    root = Path(source)
    if not root.is_dir():
        return stable_hash({"hub": source, "revision": revision})
    parts = []
    for path in sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()}):
        target = path.resolve()
        named = target.parent.name == "blobs" and len(target.name) == 64
        digest = target.name if named else _sha256_of_version(target, target.stat().st_size, target.stat().st_mtime_ns)
        parts.append((path.name, digest))
    return stable_hash(parts)


_TOKENIZER_FILES = ("tokenizer*.json", "*.model", "vocab*", "merges.txt", "special_tokens_map.json")


def tokenizer_digest(source: str, revision: str | None = None) -> str:
    """Content digest of a local checkpoint's tokenizer files; a Hub id counts by id and revision."""
    return checkpoint_digest(source, revision, patterns=_TOKENIZER_FILES)


def reference_key(ctx: StageContext, dataset: str) -> str:
    """Key of the baseline's stored log-probabilities on one dataset's perplexity windows.

    Everything that decides the token ids (data content, tokenizer files, protocol, seq_len,
    stride, max_windows) and the logits (weights, dtype, device, threads, batch size, versions),
    plus the storage (top_k) and the code that records and compares them.
    """
    r = ctx.recipe
    ppl = r.perplexity.model_dump(exclude={"datasets"})
    code = hashlib.sha256(b"".join(p.read_bytes() for p in (
        PROJECT_ROOT / "evals" / "fidelity.py", PROJECT_ROOT / "evals" / "perplexity.py",
        PROJECT_ROOT / "pipelines" / "stages" / "fidelity.py") if p.is_file())).hexdigest()[:16]
    return stable_hash({
        "weights": checkpoint_digest(ctx.base_source, r.model.revision),
        "dtype": r.model.dtype,
        "compute": compute_identity(ctx),
        "max_context": r.model.max_context,
        "data": data_digest({dataset}, r.data_dir),
        "dataset": dataset,
        "perplexity": ppl,
        "device": ctx.device,
        # not torch's thread count: it moves logits by float rounding only, and a reference
        # shared by Ray tasks of different sizes is the point of the cache
        "versions": library_versions(),
        "code": code,
    })


def benchmark_key(ctx: StageContext, threads: int | None = None, quantize: str | None = None) -> str:
    return stable_hash({
        "quantize": quantize or Manifest(ctx.sdir).stage("quantize").get("key"),
        "benchmark": ctx.recipe.benchmark.model_dump(),
        "profile": ctx.profile,
        "device": ctx.device,
        "hardware": {k: v for k, v in hardware().items() if k != "platform"},
        "torch_threads": threads or torch_threads(),
        "versions": library_versions(),
        "code": code_digest("benchmark", ctx.recipe.scheme.quantizer),
    })


def library_version_or_missing(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def serve_key(ctx: StageContext, threads: int | None = None, quantize: str | None = None) -> str:
    """The checkpoint (its quantize key), the load and engine settings, the hardware and the SLO.

    The SLO and the price are in it because serve.json records capacity and $/1M at them; the
    port is not (any free port measures the same).
    """
    r = ctx.recipe
    return stable_hash({
        "quantize": quantize or Manifest(ctx.sdir).stage("quantize").get("key"),
        "serve": r.serve.model_dump(exclude={"port"}),
        "engine": serving_engine_identity(ctx),
        "slo": r.slo.model_dump(),
        "hardware_price": r.hardware.model_dump(),
        "guidellm": library_version_or_missing("guidellm"),  # not tracked for the other stages' keys
        "device": ctx.device,
        "hardware": {k: v for k, v in hardware().items() if k != "platform"},
        "versions": library_versions(),
        "code": code_digest("serve", r.scheme.quantizer),
    })


def serving_engine_identity(ctx: StageContext) -> dict[str, Any]:
    """The engine that will serve the scheme, its version where it is not one of the tracked
    libraries (vLLM runs from its own environment), and the threads it gets."""
    from pipelines.engines import choose_engine, cpu_threads
    from pipelines.quantizers import get_quantizer

    serve = ctx.recipe.serve
    engine = choose_engine(serve.engine, get_quantizer(ctx.recipe.scheme.quantizer).engine, ctx.device)
    identity: dict[str, Any] = {"name": engine, "threads": serve.threads or cpu_threads()}
    if engine == "vllm":
        identity["version"] = _vllm_version(serve.vllm_command)
    if engine == "endpoint":  # what it serves now: numbers from before a redeploy are not reused
        identity["served"] = _endpoint_identity(serve)
    return identity


def _endpoint_identity(serve) -> dict[str, Any] | str:
    from pipelines.engines import endpoint
    from pipelines.errors import QevalError

    try:
        return endpoint.identity(endpoint.served_entry(serve))
    except QevalError as exc:  # down, or refusing: the stage itself reports why; no cached result matches
        return f"unknown: {exc}"


@cache
def _vllm_version(configured: str | None) -> str:
    from pipelines.engines import vllm
    from pipelines.errors import UnsupportedHere

    try:
        return vllm.version(vllm.command(configured))
    except UnsupportedHere:  # not installed: the stage records the skip; nothing is cached under it
        return "missing"


def stage_keys(ctx: StageContext, threads: int | None = None) -> dict[str, str]:
    """The key each per-scheme stage would have now, under the current recipe and environment.

    Evaluate and benchmark chain on the quantize key they would be built on now: where the
    quantize stage is out of date, they are too. (Inside a worker, each stage computes its own
    key after the stage before it has run, from the quantize key the manifest recorded.)
    ``threads`` is torch's thread count the stages will run with, where it is not this
    process's (a Ray task gets its CPUs).
    """
    quantize = quantize_key(ctx, threads)
    return {
        "quantize": quantize,
        "evaluate": evaluate_key(ctx, threads, quantize=quantize),
        "benchmark": benchmark_key(ctx, threads, quantize=quantize),
        "serve": serve_key(ctx, threads, quantize=quantize),
    }


def calibration_cache_key(ctx: StageContext) -> str:
    """Key of the tokenized calibration set shared by a model's schemes: content, not paths."""
    cal = ctx.recipe.calibration
    return stable_hash({"model": ctx.recipe.model.source, "rev": ctx.recipe.model.revision, **cal.model_dump(),
                        "tokenizer": tokenizer_digest(ctx.base_source, ctx.recipe.model.revision),
                        "data": data_digest({cal.dataset}, ctx.recipe.data_dir)})
