"""Calibration samples, and the held-out windows every scheme's per-layer error is scored on.

Both come from the calibration source (C4 documents disjoint from perplexity
text). Its last ``HELDOUT_DOCS`` documents are never drawn for calibration:
they hold the layer-error windows, so that every scheme (calibrated or not,
whatever its calibration size) is scored on the same tokens, out of sample.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.data import DataError, calibration_texts

log = logging.getLogger(__name__)

# The last documents of the C4 calibration source, kept out of calibration for layer errors.
HELDOUT_DATASET = "c4"
HELDOUT_DOCS = 50
# Layer errors: this many consecutive windows of this many tokens (capped by the model's context).
LAYER_ERROR_WINDOWS = 4
LAYER_ERROR_SEQ_LEN = 512
# Bumped when the windows a calibration setting yields change, so cached sets are not reused.
CALIBRATION_FORMAT = "v2-heldout"


@dataclass(frozen=True)
class CalibrationSet:
    """Token windows for quantizers that calibrate, with what produced them."""

    windows: list[list[int]]
    dataset: str
    n_samples: int
    seq_len: int
    seed: int
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "n_samples": self.n_samples,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "source": self.source,
            "token_ids_sha256": _token_digest(self.windows),
        }

    def as_gptqmodel(self) -> list[dict[str, list[int]]]:
        return [{"input_ids": w, "attention_mask": [1] * len(w)} for w in self.windows]


@dataclass(frozen=True)
class HeldOutWindows:
    """The fixed windows the per-layer error report scores every scheme on."""

    windows: list[list[int]]
    dataset: str
    seq_len: int
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "n_windows": len(self.windows), "seq_len": self.seq_len,
                "source": self.source, "token_ids_sha256": _token_digest(self.windows)}


def _token_digest(windows: list[list[int]]) -> str:
    blob = b"".join(int(t).to_bytes(4, "little") for w in windows for t in w)
    return hashlib.sha256(blob).hexdigest()


def _documents(first: int, stop: int) -> str:
    return f"[{first}, {stop})"


def _split_documents(dataset: str, data_dir: Path | None) -> tuple[tuple[list[str], dict], tuple[list[str], dict]]:
    """(calibration documents, held-out documents), each with its provenance.

    Only C4 holds documents out; other calibration datasets never meet the
    held-out C4 documents anyway.
    """
    docs, source = calibration_texts(dataset, data_dir)
    if dataset != HELDOUT_DATASET:
        return (docs, source), ([], {})
    if len(docs) <= 2 * HELDOUT_DOCS:
        raise DataError(f"c4 calibration source has {len(docs)} documents; it needs more than "
                        f"{2 * HELDOUT_DOCS} to hold {HELDOUT_DOCS} out for layer errors")
    # Document numbers in the source file (the local file starts calibration at its "documents" start).
    first = int(str(source.get("documents", "[0,")).strip("[").split(",")[0])
    cut = first + len(docs) - HELDOUT_DOCS
    calib = (docs[:-HELDOUT_DOCS], {**source, "documents": _documents(first, cut)})
    held = (docs[-HELDOUT_DOCS:], {**source, "documents": _documents(cut, cut + HELDOUT_DOCS)})
    return calib, held


def _tokenize_until(tokenizer, docs: list[str], wanted: int) -> list[int]:
    """Token ids of the documents joined by blank lines, stopping once ``wanted`` are there."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc + "\n\n", add_special_tokens=False).input_ids)
        if len(ids) >= wanted:
            break
    return ids


def layer_error_windows(tokenizer, *, data_dir: Path | None, seq_len: int = LAYER_ERROR_SEQ_LEN,
                        n_windows: int = LAYER_ERROR_WINDOWS) -> HeldOutWindows:
    """Consecutive windows from the start of the held-out C4 documents (no seed: always the same)."""
    _, (docs, source) = _split_documents(HELDOUT_DATASET, data_dir)
    ids = _tokenize_until(tokenizer, docs, n_windows * seq_len)
    count = min(n_windows, len(ids) // seq_len)
    if count == 0:
        raise DataError(f"held-out layer-error text too short: {len(ids)} tokens for windows of {seq_len}")
    windows = [ids[i * seq_len : (i + 1) * seq_len] for i in range(count)]
    return HeldOutWindows(windows, HELDOUT_DATASET, seq_len, source)


def build_calibration(
    tokenizer, *, dataset: str, n_samples: int, seq_len: int, seed: int, data_dir: Path | None
) -> CalibrationSet:
    """Draw ``n_samples`` random windows of ``seq_len`` tokens from the calibration documents.

    The documents are joined with blank lines and tokenized once; windows start
    at distinct random offsets (as in the GPTQ reference code, which samples
    random spans of random documents). Raises DataError when the text is too
    short for even one window.
    """
    import torch

    (docs, source), _ = _split_documents(dataset, data_dir)
    # Tokenize only as much text as the windows need (times four, so that the
    # random offsets still have room), instead of the whole corpus.
    ids = _tokenize_until(tokenizer, docs, max(n_samples * seq_len * 4, seq_len + 1))
    if len(ids) <= seq_len:
        raise DataError(
            f"calibration set too short: {len(ids)} tokens of {dataset} for windows of {seq_len}. "
            "Lower calibration.seq_len or use a larger calibration dataset."
        )
    gen = torch.Generator().manual_seed(seed)
    max_start = len(ids) - seq_len
    count = min(n_samples, max_start + 1)
    if count < n_samples:
        log.warning("calibration: only %d distinct windows fit in %d tokens", count, len(ids))
    starts = torch.randperm(max_start + 1, generator=gen)[:count].tolist()
    windows = [ids[s : s + seq_len] for s in starts]
    return CalibrationSet(windows, dataset, count, seq_len, seed, source)
