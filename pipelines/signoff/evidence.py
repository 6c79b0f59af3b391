"""What the gates judge about one scheme, read from its run directory.

Every file is read through its class in ``evals.results`` (never as a raw
dict), so a reader and the stage that wrote the file cannot disagree on its
shape. Only a scheme whose every stage is done under its current key is read
(``pipelines.signoff.readiness``): anything else is NOT JUDGED, never read here.

Cost numbers count only when they represent the model's target device: the
benchmark must have run on a device of the model's ``target_device`` kind
(``speed.json``'s ``device_kind``, compared exactly) and its run must be
representative (not a checkpoint decompressed to dense, see ``evals.kernels``).
Otherwise the cost gates are SKIPPED, with the reason kept here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evals.data import read_jsonl
from evals.fidelity import read_token_kl
from evals.results import (
    FidelityFile,
    MemoryResult,
    PerplexityFile,
    PerplexityResult,
    SpeedResult,
    TasksResult,
)
from pipelines.recipes import ResolvedRecipe
from pipelines.rundir import SchemeDir
from pipelines.signoff.metrics import speed_shape


@dataclass(frozen=True)
class PerplexityEvidence:
    """One dataset's per-window NLLs and what identifies its windows.

    ``n_windows_available`` is how many windows the whole dataset has, where
    known (every window was scored), so an inconclusive gate can say whether
    more windows could settle it.
    """

    window_nll: list[float]
    ppl: float | None = None
    token_ids_sha256: str | None = None
    protocol: str | None = None
    seq_len: int | None = None
    stride: int | None = None
    n_windows_available: int | None = None

    # Fields that must agree for two runs to have scored the same windows.
    IDENTITY = ("token_ids_sha256", "protocol", "seq_len", "stride")

    @classmethod
    def from_result(cls, result: PerplexityResult, max_windows: int | None) -> PerplexityEvidence:
        # With no cap, or fewer windows than the cap, every window of the text was scored.
        complete = max_windows is None or result.n_windows < max_windows
        return cls(
            window_nll=list(result.window_nll),
            ppl=result.ppl,
            token_ids_sha256=result.token_ids_sha256,
            protocol=result.protocol,
            seq_len=result.seq_len,
            stride=result.stride,
            n_windows_available=result.n_windows if complete else None,
        )


@dataclass
class SchemeEvidence:
    """Everything the gates need about one scheme."""

    scheme: str
    perplexity: dict[str, PerplexityEvidence] = field(default_factory=dict)
    task_samples: dict[str, list[dict]] = field(default_factory=dict)  # samples/<task>.jsonl rows
    task_metrics: dict[str, dict] = field(default_factory=dict)  # tasks.json "results"
    fidelity: FidelityFile | None = None  # eval/fidelity.json (KL, top-1 vs the baseline, noise floor)
    token_kl: dict[str, Any] = field(default_factory=dict)  # dataset -> per-token KL array
    task_sizes: dict[str, int] = field(default_factory=dict)  # examples in each task's dataset, where known
    weights_gib: float | None = None
    decode_tok_s: dict[int, float] = field(default_factory=dict)  # batch size -> median decode tok/s
    ttft_ms_p99: dict[int, float] = field(default_factory=dict)  # batch size -> p99 TTFT
    speed_shape: dict[int, str] = field(default_factory=dict)  # batch size -> the prompt/gen lengths gated
    speed_suffix: dict[int, str] = field(default_factory=dict)  # batch size -> "bs1.p64.g16", as MLflow names it
    cost_representative: bool = True
    cost_note: str | None = None  # why the cost numbers are not representative
    cost_device: str | None = None  # the device (name) the cost numbers were measured on
    serve: Any = None  # pipelines.signoff.serving.ServeEvidence: capacity, goodput, $/1M from serve.json


def read_evidence(sdir: SchemeDir, scheme: str, recipe: ResolvedRecipe) -> SchemeEvidence:
    """Collect what the gates need from one scheme's finished run directory."""
    ev = SchemeEvidence(scheme=scheme)
    ppl = PerplexityFile.read_if_present(sdir.eval_dir / PerplexityFile.FILE)
    if ppl is not None:
        ev.perplexity = {
            name: PerplexityEvidence.from_result(r, recipe.perplexity.max_windows)
            for name, r in ppl.datasets.items()
        }
    tasks = TasksResult.read_if_present(sdir.eval_dir / TasksResult.FILE)
    if tasks is not None:
        ev.task_metrics = dict(tasks.results)
        for task in tasks.results:
            rel = tasks.samples.get(task)
            if rel and (sdir.eval_dir / rel).is_file():
                ev.task_samples[task] = read_jsonl(sdir.eval_dir / rel)
            size = task_size(tasks, task)
            if size is not None:
                ev.task_sizes[task] = size
    ev.fidelity = FidelityFile.read_if_present(sdir.eval_dir / FidelityFile.FILE)
    if ev.fidelity is not None:
        ev.token_kl = read_token_kl(sdir.eval_dir, ev.fidelity.token_kl_file)
    _read_cost(sdir, recipe.model.target_device, ev)
    from pipelines.signoff.serving import read_serve_evidence

    ev.serve = read_serve_evidence(sdir, recipe.scheme.quantizer, recipe.model.target_device)
    return ev


def task_size(tasks: TasksResult, task: str) -> int | None:
    """How many examples the task's whole dataset has, where tasks.json tells.

    A local task records the rows of the dataset it read (its provenance);
    otherwise a run without a limit, or one whose limit exceeded the data,
    scored every example.
    """
    provenance: Any = tasks.provenance.get(task)
    if isinstance(provenance, dict) and isinstance(provenance.get("rows"), int):
        return provenance["rows"]
    n, limit = tasks.n_samples.get(task), tasks.limit.get(task)
    if n is not None and (limit is None or n < limit):
        return n
    return None


def _read_cost(sdir: SchemeDir, target_device: str, ev: SchemeEvidence) -> None:
    memory = MemoryResult.read_if_present(sdir.bench_dir / MemoryResult.FILE)
    speed = SpeedResult.read_if_present(sdir.bench_dir / SpeedResult.FILE)
    if memory is not None:
        ev.weights_gib = memory.weights_bytes / 2**30
    if speed is None:
        return
    ev.cost_device = speed.device_name
    # One row per batch size: the shortest prompt, then the shortest generation, so a
    # scheme and its baseline are compared on the same shape whatever the suite lists.
    rows = sorted(
        (r for r in speed.results if r.get("status") == "ok"),
        key=lambda r: (r["batch_size"], r["prompt_len"], r["gen_len"]),
    )
    for row in rows:
        bs = row["batch_size"]
        if bs not in ev.decode_tok_s:
            ev.decode_tok_s[bs] = row["decode_tok_s"]["median"]
            ev.ttft_ms_p99[bs] = row["ttft_ms"]["p99"]
            ev.speed_shape[bs] = f"prompt {row['prompt_len']} tokens, {row['gen_len']} generated"
            ev.speed_suffix[bs] = speed_shape(bs, row["prompt_len"], row["gen_len"])
    reasons = []
    if speed.device_kind != target_device:
        reasons.append(
            f"measured on {speed.device_kind} ({speed.device_name}), "
            f"the model's target device is {target_device}"
        )
    # The benchmark decides this from what it saw run (evals.kernels), not from the scheme's name.
    if not speed.representative or (memory is not None and not memory.representative):
        reasons.append(speed.representative_reason or "the benchmark marked its run not representative")
    if reasons:
        ev.cost_representative, ev.cost_note = False, "; ".join(reasons)
