"""The evaluate stage's fidelity part: obtain the baseline's reference, observe, write fidelity.json.

The baseline's log-probabilities on each perplexity dataset are stored once per model in
``runs/<model>/.cache/fidelity/<reference key>.<dataset>.pt`` (key: ``stages.keys.reference_key``).
Whichever evaluation needs one first makes it, under a file lock, so schemes can be
evaluated in any order and by any executor:

* the baseline scheme records it during its own perplexity pass (no extra pass);
* any other scheme loads the base model in the compute dtype, records it, frees it, and only
  then loads its own checkpoint.

The noise floor is the same weights in the two precisions a user would serve: float32 and
bfloat16, one of which is the compute dtype. It is measured by the same evaluation, once, and
stored beside the reference. Where the other precision is bfloat16 on a CPU that has no native
bf16 (torch's fallback there is ~30x slower than float32), the floor model keeps float32
arithmetic with its weights rounded to bfloat16: the weight rounding a bf16 deployment applies,
without the activation rounding, and its ``comparison`` says so.
:func:`floor_figures` takes any scorer, so another engine's reference point (a GGUF f16 file
under llama.cpp) can be measured the same way and recorded beside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from evals.data import perplexity_text, resolve_data_dir
from evals.fidelity import FidelityAccumulator, Reference, ReferenceRecorder, method_text
from evals.perplexity import compute_perplexity
from evals.results import FidelityFile
from pipelines.quantizers import loading
from pipelines.rundir import file_lock, model_dir, write_json_atomic
from pipelines.rundir.atomic import write_bytes_atomic
from pipelines.stages.common import StageContext
from pipelines.stages.keys import reference_key

log = logging.getLogger(__name__)

TOKEN_KL_FILE = "fidelity_token_kl.npz"
# The reference of a large model takes minutes to record; others wait for it.
REFERENCE_LOCK_TIMEOUT_S = 6 * 3600


def floor_dtype(dtype: str) -> str:
    """The other dtype the baseline is compared with to measure the noise floor."""
    return "bfloat16" if dtype == "float32" else "float32"


def floor_precision(compute_dtype: str, device: str, native_bf16: bool | None) -> tuple[str, str | None, str]:
    """How the floor's model runs: (load dtype, dtype its weights are rounded to or None, label)."""
    other = floor_dtype(compute_dtype)
    if other == "bfloat16" and device == "cpu" and not native_bf16:
        return ("float32", "bfloat16",
                "baseline with bfloat16-rounded weights, computed in float32 (bfloat16 is not native on this CPU)")
    return other, None, f"baseline in {other}"


def round_weights(model, dtype_name: str) -> None:
    """Round every floating-point parameter to ``dtype_name`` and back, in place."""
    import torch

    dtype = getattr(torch, dtype_name)
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point():
                param.copy_(param.to(dtype).to(param.dtype))


def floor_figures(scorer, tokenizer, reference: Reference, ppl_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fidelity of any scorer (a model, or an object with ``logits``) against ``reference``, without the series."""
    acc = FidelityAccumulator(reference)
    compute_perplexity(scorer, tokenizer, observer=acc, show_progress=False, **ppl_kwargs)
    summary = acc.summary()
    return {k: v for k, v in summary.items() if not k.startswith("window_")}


class FidelityRun:
    """One scheme's fidelity measurement across the perplexity datasets (see the module doc)."""

    def __init__(self, ctx: StageContext, tokenizer, seq_len: int, context: int, is_reference: bool):
        self.ctx, self.tokenizer, self.seq_len, self.context = ctx, tokenizer, seq_len, context
        self.cfg = ctx.recipe.perplexity.fidelity
        wanted = self.cfg.datasets
        self.datasets = [d for d in ctx.recipe.perplexity.datasets if wanted is None or d in wanted]
        self.keys = {d: reference_key(ctx, d) for d in self.datasets}
        self.cache = model_dir(ctx.model) / ".cache" / "fidelity"
        self.is_reference = is_reference
        self.references: dict[str, Reference] = {}
        self.recorders: dict[str, ReferenceRecorder] = {}
        self.accumulators: dict[str, FidelityAccumulator] = {}
        self.timing: dict[str, float] = {}
        self.extra_floors: set[str] = set()

    def _path(self, dataset: str, what: str) -> Path:
        return self.cache / f"{self.keys[dataset]}.{dataset}.{what}"

    def ppl_kwargs(self, dataset: str) -> dict[str, Any]:
        p = self.ctx.recipe.perplexity
        text, source = perplexity_text(dataset, resolve_data_dir(self.ctx.recipe.data_dir))
        return dict(text=text, dataset=dataset, source=source, protocol=p.protocol, seq_len=self.seq_len,
                    stride=p.stride, max_windows=p.max_windows, batch_size=p.batch_size, max_context=self.context)

    @contextlib.contextmanager
    def prepared(self):
        """Hold the references ready for the scheme's pass; record them in it when they are missing."""
        lock = file_lock(self.cache / "reference", timeout_s=REFERENCE_LOCK_TIMEOUT_S)
        with lock:
            missing = [d for d in self.datasets if not self._path(d, "pt").is_file()]
            if missing and self.is_reference:
                # The baseline's own pass records the reference; the lock is held through it.
                self.recorders = {d: ReferenceRecorder(self.cfg.top_k) for d in missing}
                yield self
                for d in missing:
                    self._store(d, self.recorders[d].reference)
                self._ensure_floor()
                return
            if missing:
                self._record_from_base(missing)
            self._ensure_floor()
        yield self

    def observer(self, dataset: str):
        """The observer of ``dataset``'s perplexity pass (None for a dataset fidelity does not compare)."""
        if dataset not in self.datasets:
            return None
        if dataset in self.recorders:
            recorder = self.recorders[dataset]

            def record_then_compare(window, logits, targets):
                recorder(window, logits, targets)
                if dataset not in self.accumulators:
                    self.accumulators[dataset] = FidelityAccumulator(recorder.reference)
                self.accumulators[dataset](window, logits, targets)

            return record_then_compare
        self.accumulators[dataset] = FidelityAccumulator(self._reference(dataset))
        return self.accumulators[dataset]

    def _reference(self, dataset: str) -> Reference:
        if dataset not in self.references:
            self.references[dataset] = Reference.from_bytes(self._path(dataset, "pt").read_bytes())
        return self.references[dataset]

    def _store(self, dataset: str, reference: Reference | None) -> None:
        if reference is None:
            raise RuntimeError(f"no window of {dataset} was scored; nothing to store as the fidelity reference")
        reference.meta.update(dataset=dataset, dtype=self.ctx.compute_dtype, device=self.ctx.device,
                              key=self.keys[dataset], targets_sha256=reference.targets_sha256())
        write_bytes_atomic(self._path(dataset, "pt"), reference.to_bytes())
        self.references[dataset] = reference
        log.info("%s: fidelity reference for %s stored (%d tokens, %.1f MB)", self.ctx.model, dataset,
                 reference.n_tokens(), reference.nbytes() / 1e6)

    def _load_base(self, dtype: str):
        m = self.ctx.recipe.model
        return loading.load_dense(self.ctx.base_source, dtype, self.ctx.device, revision=m.revision,
                                  n_gpus=m.n_gpus, trust_remote_code=m.trust_remote_code, stage="fidelity")

    def _record_from_base(self, datasets: list[str]) -> None:
        start = time.perf_counter()
        model = self._load_base(self.ctx.compute_dtype)
        for d in datasets:
            recorder = ReferenceRecorder(self.cfg.top_k)
            compute_perplexity(model, self.tokenizer, observer=recorder, show_progress=False, **self.ppl_kwargs(d))
            self._store(d, recorder.reference)
        del model
        self.timing["reference_s"] = time.perf_counter() - start

    def _ensure_floor(self) -> None:
        todo = [d for d in self.datasets if not self._path(d, "floor.json").is_file()]
        if not self.cfg.noise_floor or not todo:
            return
        start = time.perf_counter()
        choice = self.ctx.recipe.model.compute
        dtype, rounded_to, label = floor_precision(self.ctx.compute_dtype, self.ctx.device,
                                                   choice.native_bf16 if choice else None)
        model = self._load_base(dtype)
        if rounded_to:
            round_weights(model, rounded_to)
        for d in todo:
            figures = floor_figures(model, self.tokenizer, self._reference(d), self.ppl_kwargs(d))
            figures["comparison"] = f"{label} against the baseline in {self.ctx.compute_dtype}"
            write_json_atomic(self._path(d, "floor.json"), figures)
        del model
        self.timing["noise_floor_s"] = time.perf_counter() - start

    def has_floor(self, label: str) -> bool:
        return all(self._path(d, f"floor-{label}.json").is_file() for d in self.datasets)

    def add_floor(self, label: str, scorer) -> None:
        """Measure another reference point against the baseline once per model, e.g. ``gguf-f16``
        under llama.cpp (any scorer ``compute_perplexity`` accepts); fidelity.json lists it under
        ``noise_floor[<dataset>]["others"][label]``."""
        for d in self.datasets:
            path = self._path(d, f"floor-{label}.json")
            if path.is_file():
                continue
            figures = floor_figures(scorer, self.tokenizer, self._reference(d), self.ppl_kwargs(d))
            figures["comparison"] = f"{label} against the baseline in {self.ctx.compute_dtype}"
            write_json_atomic(path, figures)
            self.extra_floors.add(label)

    def _others(self, dataset: str) -> dict[str, Any]:
        out = {}
        for path in sorted(self.cache.glob(f"{self.keys[dataset]}.{dataset}.floor-*.json")):
            out[path.name.split(".floor-", 1)[1].removesuffix(".json")] = json.loads(path.read_text())
        return out

    def write(self, eval_dir: Path) -> list[Path]:
        """Write fidelity.json and the per-token KL file; return their paths."""
        datasets, token_kl = {}, {}
        for d in self.datasets:
            acc = self.accumulators.get(d)
            if acc is None:
                raise RuntimeError(f"fidelity: {d} was not scored")
            datasets[d] = acc.summary()
            token_kl[d] = acc.token_kl()
        floor = None
        if self.cfg.noise_floor:
            floor = {d: {**json.loads(self._path(d, "floor.json").read_text()), "others": self._others(d)}
                     for d in self.datasets}
        k = self._reference(self.datasets[0]).k
        reference = {
            "top_k": k, "dtype": self.ctx.compute_dtype, "storage_dtype": self.ctx.recipe.model.dtype,
            "device": self.ctx.device,
            "keys": self.keys, "seconds": self.timing,
            "bytes": {d: self._reference(d).nbytes() for d in self.datasets},
            "n_tokens": {d: self._reference(d).n_tokens() for d in self.datasets},
            "targets_sha256": {d: self._reference(d).meta.get("targets_sha256") for d in self.datasets},
        }
        kl_path = eval_dir / TOKEN_KL_FILE
        tmp = kl_path.with_suffix(".tmp.npz")
        np.savez(tmp, **token_kl)
        tmp.replace(kl_path)
        out = FidelityFile(method=method_text(k), bound="exact" if k is None else "lower", reference=reference,
                           datasets=datasets, noise_floor=floor, token_kl_file=TOKEN_KL_FILE)
        return [out.write(eval_dir / FidelityFile.FILE), kl_path]


def fidelity_run(ctx: StageContext, tokenizer, is_reference: bool) -> FidelityRun | None:
    """The scheme's fidelity measurement, or None when the recipe turned it off."""
    if ctx.recipe.perplexity.fidelity is None:
        return None
    from pipelines.recipes import models

    m = ctx.recipe.model
    config = loading.load_config(ctx.base_source, m.revision, trust_remote_code=m.trust_remote_code)
    context = models.max_context(config, m)
    return FidelityRun(ctx, tokenizer, models.perplexity_seq_len(ctx.recipe.perplexity.seq_len, context), context,
                       is_reference)
