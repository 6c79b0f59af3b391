"""Calibration samples: token windows drawn with a seed from text disjoint from evaluation."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.data import DataError, calibration_texts

log = logging.getLogger(__name__)


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
        blob = b"".join(int(t).to_bytes(4, "little") for w in self.windows for t in w)
        return {
            "dataset": self.dataset,
            "n_samples": self.n_samples,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "source": self.source,
            "token_ids_sha256": hashlib.sha256(blob).hexdigest(),
        }

    def as_gptqmodel(self) -> list[dict[str, list[int]]]:
        return [{"input_ids": w, "attention_mask": [1] * len(w)} for w in self.windows]


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

    docs, source = calibration_texts(dataset, data_dir)
    # Tokenize only as much text as the windows need (times four, so that the
    # random offsets still have room), instead of the whole corpus.
    wanted = max(n_samples * seq_len * 4, seq_len + 1)
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc + "\n\n", add_special_tokens=False).input_ids)
        if len(ids) >= wanted:
            break
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
