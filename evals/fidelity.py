"""Distribution fidelity: how far a scheme's next-token distributions are from the baseline's.

Both are scored on the very same perplexity windows (same token ids, same protocol), through
the ``observer`` hook of :func:`evals.perplexity.compute_perplexity`.

The baseline's distributions are stored once per model as a :class:`Reference`: for every
scored position the ``k`` most likely token ids and their log-probabilities (float32), the
log of the probability mass of all other tokens ("rest"), the log-probability of the true
next token and its id. With ``k=None`` full rows are stored (float32, exact; only for small
vocabularies or a few windows: 4 bytes x vocab per token).

What is computed, exactly:

* ``kl_base_scheme`` / ``kl_scheme_base``: with top-k storage, KL divergence between the two
  distributions *coarse-grained* onto k+1 buckets (the baseline's top-k tokens, each its own
  bucket, and one bucket for all other tokens). By the data-processing inequality a
  coarse-graining never increases a KL divergence, so both are **lower bounds** of the
  full-vocabulary KL (``bound: "lower"``); with full rows they are the exact KL
  (``bound: "exact"``). Nats per token.
* ``top1_agreement``: share of positions where the scheme's most likely token is the
  baseline's (exact in both storages).
* ``top_k_overlap``: mean |top-m(scheme) ∩ top-m(baseline)| / m with m = min(10, k) (exact).
* ``delta_nll_mean``: mean over positions of NLL_scheme(true token) - NLL_baseline (exact).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_TOP_K = 32
OVERLAP_K = 10
# fp32 rows processed at once: bounds the [rows, vocab] temporaries to ~64 MiB.
_CHUNK_BYTES = 64 * 2**20
PERCENTILES = {"median": 50, "p90": 90, "p99": 99}


class FidelityError(ValueError):
    """The reference cannot be compared with this scoring (other token ids, other windows)."""


def _chunks(n_rows: int, vocab: int):
    step = max(1, _CHUNK_BYTES // (8 * max(vocab, 1)))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


@dataclass
class ReferenceWindow:
    targets: Any  # int32 [n]
    target_logp: Any  # float32 [n]
    logp: Any  # float32 [n, k] (top-k, descending) or [n, vocab] (full rows)
    ids: Any | None  # int32 [n, k]; None for full rows
    rest: Any | None  # float32 [n]: log of the mass outside the top-k; None for full rows


@dataclass
class Reference:
    """The baseline's stored log-probabilities on every scored position, window by window."""

    k: int | None  # None: full rows
    vocab: int
    windows: list[ReferenceWindow] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # dtype, device, dataset, token ids digest

    @property
    def exact(self) -> bool:
        return self.k is None

    def n_tokens(self) -> int:
        return sum(int(w.targets.numel()) for w in self.windows)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for w in self.windows
                   for t in (w.targets, w.target_logp, w.logp, w.ids, w.rest) if t is not None)

    def to_bytes(self) -> bytes:
        import torch

        buf = io.BytesIO()
        torch.save({"k": self.k, "vocab": self.vocab, "meta": self.meta,
                    "windows": [vars(w) for w in self.windows]}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Reference:
        import torch

        raw = torch.load(io.BytesIO(data), weights_only=True)
        return cls(raw["k"], raw["vocab"], [ReferenceWindow(**w) for w in raw["windows"]], raw["meta"])

    def targets_sha256(self) -> str:
        import torch

        ids = torch.cat([w.targets for w in self.windows]) if self.windows else torch.zeros(0)
        return hashlib.sha256(ids.to(torch.int64).numpy().tobytes()).hexdigest()


class ReferenceRecorder:
    """Observer that records the baseline's distributions into a :class:`Reference`."""

    def __init__(self, k: int | None = DEFAULT_TOP_K):
        if k is not None and k < 1:
            raise FidelityError(f"fidelity top_k must be >= 1 (or null for full rows), got {k}")
        self.k = k
        self.reference: Reference | None = None

    def __call__(self, window: int, logits, targets) -> None:
        import torch

        n, vocab = logits.shape
        if self.reference is None:
            self.reference = Reference(None if self.k is None or self.k >= vocab else self.k, vocab)
        ref = self.reference
        if window != len(ref.windows):
            raise FidelityError(f"windows must arrive in order: got {window}, expected {len(ref.windows)}")
        parts: dict[str, list] = {"target_logp": [], "logp": [], "ids": [], "rest": []}
        for a, b in _chunks(n, vocab):
            logp = torch.log_softmax(logits[a:b].float(), dim=-1)
            parts["target_logp"].append(logp.gather(1, targets[a:b, None].long())[:, 0])
            if ref.k is None:
                parts["logp"].append(logp)
                continue
            top = logp.topk(ref.k, dim=-1)
            parts["logp"].append(top.values)
            parts["ids"].append(top.indices.to(torch.int32))
            parts["rest"].append(_rest(top.values).float())
        cat = {key: torch.cat(v).cpu() if v else None for key, v in parts.items()}
        ref.windows.append(ReferenceWindow(targets.to(torch.int32).cpu(), cat["target_logp"], cat["logp"],
                                           cat["ids"], cat["rest"]))


# Smallest "rest" mass kept: 1 - sum(top-k) can round to 0 or below when the top-k hold
# nearly all the mass; a floor keeps both KL directions finite (its effect is < 1e-9 nats).
_REST_FLOOR = 1e-30


def _rest(top_logp):
    """log of the probability mass outside the given top-k log-probs (float64)."""
    import torch

    mass = 1.0 - torch.exp(top_logp.double()).sum(-1)
    return torch.log(mass.clamp_min(_REST_FLOOR))


def _kl(p, q):
    """Sum over the last axis of exp(p) * (p - q) for log-probabilities; 0 * log 0 counts as 0."""
    import torch

    terms = torch.exp(p) * (p - q)
    return torch.where(torch.isneginf(p), torch.zeros_like(terms), terms).sum(-1)


class FidelityAccumulator:
    """Observer that compares a scheme's distributions with a :class:`Reference`, window by window."""

    def __init__(self, reference: Reference):
        self.ref = reference
        self.kl_pq: list[np.ndarray] = []  # per window, per token KL(base || scheme)
        self.kl_qp: list[np.ndarray] = []
        self.top1: list[np.ndarray] = []
        self.overlap: list[np.ndarray] = []
        self.dnll: list[np.ndarray] = []
        self.overlap_k = min(OVERLAP_K, reference.k or OVERLAP_K)

    def __call__(self, window: int, logits, targets) -> None:
        import torch

        if window >= len(self.ref.windows):
            raise FidelityError(f"window {window} is not in the reference ({len(self.ref.windows)} windows); "
                                "the reference was recorded with other perplexity settings")
        rw = self.ref.windows[window]
        if rw.targets.shape != targets.shape or not torch.equal(rw.targets.long(), targets.long().cpu()):
            raise FidelityError(f"window {window}: token ids differ from the reference's; the baseline and "
                                "the scheme must score the same text with the same tokenizer and protocol")
        n, vocab = logits.shape
        if vocab != self.ref.vocab:
            raise FidelityError(f"vocabulary of {vocab} tokens, the reference has {self.ref.vocab}")
        out = {key: [] for key in ("pq", "qp", "top1", "overlap", "dnll")}
        m = self.overlap_k
        for a, b in _chunks(n, vocab):
            if self.ref.k is None:  # exact: float64 rows (checks and small vocabularies only)
                q = torch.log_softmax(logits[a:b].double(), dim=-1).cpu()
                p = rw.logp[a:b].double()
                ref_top1 = p.argmax(-1)
                ref_topm = p.topk(m, dim=-1).indices
                qb = q
            else:
                # One float32 log-softmax per row; the bucket arithmetic is float64 on k+1 values.
                q = torch.log_softmax(logits[a:b].float(), dim=-1).cpu()
                ids = rw.ids[a:b].long()
                p = torch.cat([rw.logp[a:b], rw.rest[a:b, None]], dim=1).double()
                q_top = q.gather(1, ids).double()
                qb = torch.cat([q_top, _rest(q_top)[:, None]], dim=1)
                ref_top1, ref_topm = ids[:, 0], ids[:, :m]
            # Tie-aware (bf16 logits tie often): the baseline's top token agrees when it is one of the
            # scheme's most likely tokens; a baseline top-m token overlaps when the scheme ranks it
            # at or above its own m-th value.
            scheme_top = q.topk(m, dim=-1).values
            at_ref = q.gather(1, ref_topm)
            out["pq"].append(_kl(p, qb))
            out["qp"].append(_kl(qb, p))
            out["top1"].append((q.gather(1, ref_top1[:, None])[:, 0] >= scheme_top[:, 0]).float())
            out["overlap"].append((at_ref >= scheme_top[:, -1:]).sum(-1).clamp_max(m).float() / m)
            tgt = targets[a:b, None].long().cpu()
            out["dnll"].append(rw.target_logp[a:b].double() - q.gather(1, tgt)[:, 0])
        # Rounding can make a KL of identical rows a hair negative; KL is >= 0.
        self.kl_pq.append(torch.cat(out["pq"]).clamp_min(0).numpy())
        self.kl_qp.append(torch.cat(out["qp"]).clamp_min(0).numpy())
        self.top1.append(torch.cat(out["top1"]).numpy())
        self.overlap.append(torch.cat(out["overlap"]).numpy())
        self.dnll.append(torch.cat(out["dnll"]).numpy())

    def summary(self) -> dict[str, Any]:
        """The figures of ``eval/fidelity.json`` for one dataset, with the per-window series."""
        if len(self.kl_pq) != len(self.ref.windows):
            raise FidelityError(f"scored {len(self.kl_pq)} windows, the reference has {len(self.ref.windows)}; "
                                "the scheme and the reference must use the same max_windows")
        pq, qp = np.concatenate(self.kl_pq), np.concatenate(self.kl_qp)
        return {
            "kl_base_scheme": distribution(pq),
            "kl_scheme_base": distribution(qp),
            "top1_agreement": float(np.concatenate(self.top1).mean()),
            "top_k_overlap": float(np.concatenate(self.overlap).mean()),
            "overlap_k": self.overlap_k,
            "delta_nll_mean": float(np.concatenate(self.dnll).mean()),
            "n_tokens": int(pq.size),
            "n_windows": len(self.kl_pq),
            "window_tokens": [int(w.size) for w in self.kl_pq],
            "window_kl_mean": [float(w.mean()) for w in self.kl_pq],
            "window_top1": [float(w.mean()) for w in self.top1],
        }

    def token_kl(self) -> np.ndarray:
        """Per-token KL(base || scheme) of every scored position, in window order (float32)."""
        return np.concatenate(self.kl_pq).astype(np.float32)


def distribution(values: np.ndarray) -> dict[str, float]:
    """Mean, median, p90, p99 and max of per-token values."""
    out = {"mean": float(values.mean())}
    out.update({name: float(np.percentile(values, q)) for name, q in PERCENTILES.items()})
    out["max"] = float(values.max())
    return out


def method_text(k: int | None) -> str:
    """The exact quantity, in words, recorded in fidelity.json and repeated in docs/fidelity.md."""
    if k is None:
        return "exact full-vocabulary KL (baseline rows stored in full, float32)"
    return (f"KL over {k + 1} buckets: the baseline's top-{k} tokens and one bucket for every other token. "
            "A coarse-graining never increases a KL divergence (data-processing inequality), so both "
            "directions are LOWER BOUNDS of the full-vocabulary KL. top1_agreement, top_k_overlap and "
            "delta_nll_mean are exact.")


def read_token_kl(eval_dir, name: str | None) -> dict[str, np.ndarray]:
    """The per-token KL(base || scheme) arrays written beside fidelity.json, by dataset (empty when absent)."""
    from pathlib import Path

    path = Path(eval_dir) / name if name else None
    if path is None or not path.is_file():
        return {}
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
