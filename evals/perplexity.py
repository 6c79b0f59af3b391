"""Perplexity with its protocol recorded: the GPTQ/AWQ fixed-window one or a sliding window.

``gptq``: the text is tokenized once with the tokenizer's defaults, cut into
non-overlapping windows of ``seq_len`` from the start (the remainder is
dropped), and perplexity is exp of the mean of the per-window mean token NLL,
as in the GPTQ and AWQ reference code.

``sliding``: windows of ``seq_len`` advance by ``stride`` and score only the
tokens not scored before (the transformers perplexity guide); perplexity is
exp of the token-weighted mean NLL.

Word-level perplexity and bits per byte are derived from the summed NLL over
the scored span, so numbers can be set beside lm-eval's.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

from evals.results import PerplexityResult


class PerplexityError(ValueError):
    """The protocol cannot be applied (window too long, text too short)."""


# fp32 bytes one NLL chunk may hold: log-softmax needs the logits in fp32, and the
# whole [batch, seq, vocab] block in fp32 is gigabytes for a 128k vocabulary.
NLL_CHUNK_BYTES = 64 * 2**20


def token_nll(logits, targets, chunk_positions: int | None = None):
    """Return the float32 NLL of each target, [batch, seq], from logits [batch, seq, vocab].

    NLL = logsumexp(logits) - logit of the target, in float32. Positions are scored in
    chunks copied into one preallocated float32 buffer and worked on in place, so the
    extra memory is one chunk's fp32 logits rather than the whole block's, and no chunk
    allocates (and page-faults) a fresh block: half the time of cross_entropy's
    log-softmax, which equals it to float rounding (about 1e-7 relative).
    ``chunk_positions`` defaults to what fits in :data:`NLL_CHUNK_BYTES`. Every
    position's NLL is computed exactly as in one call (rows are independent).
    """
    import torch

    batch, seq, vocab = logits.shape
    if chunk_positions is None:
        chunk_positions = max(1, NLL_CHUNK_BYTES // (4 * batch * vocab))
    if chunk_positions < 1:
        raise PerplexityError(f"chunk_positions must be >= 1, got {chunk_positions}")
    out = torch.empty((batch, seq), dtype=torch.float32, device=logits.device)
    buffer = torch.empty((batch, min(chunk_positions, seq), vocab), dtype=torch.float32, device=logits.device)
    for start in range(0, seq, chunk_positions):
        end = min(start + chunk_positions, seq)
        block = buffer[:, : end - start]
        block.copy_(logits[:, start:end])
        target = block.gather(-1, targets[:, start:end, None]).squeeze(-1)
        peak = block.amax(-1, keepdim=True)  # subtracted first: exp cannot overflow
        block.sub_(peak).exp_()
        out[:, start:end] = block.sum(-1).log_() + peak.squeeze(-1) - target
    return out


def windows_for(n_ids: int, protocol: str, seq_len: int, stride: int | None) -> list[tuple[int, int, int]]:
    """Return (begin, end, first_scored) for each window; targets from first_scored+1 to end are scored."""
    if protocol == "gptq":
        return [(i * seq_len, (i + 1) * seq_len, i * seq_len) for i in range(n_ids // seq_len)]
    stride = stride or seq_len // 2
    if not 0 < stride <= seq_len:
        raise PerplexityError(f"stride {stride} must be in (0, seq_len={seq_len}]")
    spans, prev_end = [], 0
    for begin in range(0, n_ids - 1, stride):
        end = min(begin + seq_len, n_ids)
        # Score targets in (prev_end, end): the first window scores all but its first token.
        spans.append((begin, end, max(prev_end - 1, begin)))
        prev_end = end
        if end == n_ids:
            break
    return spans


# Characters per token are rarely above 8; a prefix this many times longer than
# the tokens needed, plus a safety margin, tokenizes identically to the full text
# over the tokens that are used.
_CHARS_PER_TOKEN_BOUND = 12
_PREFIX_MARGIN_TOKENS = 256


def _token_ids(tokenizer, text: str, protocol: str, seq_len: int, stride: int | None, max_windows: int | None):
    """Tokenize the text once; with ``max_windows`` only a prefix long enough for them.

    Tokenizers split on pre-token boundaries, so the ids of a long enough
    prefix equal the first ids of the whole text; the margin keeps the cut far
    from any token that is scored. Smoke runs thus skip tokenizing 1.3 MB.
    """
    if max_windows:
        step = seq_len if protocol == "gptq" else (stride or seq_len // 2)
        needed = (max_windows - 1) * step + seq_len + _PREFIX_MARGIN_TOKENS
        cut = needed * _CHARS_PER_TOKEN_BOUND
        if cut < len(text):
            ids = tokenizer(text[:cut], return_tensors="pt").input_ids[0]
            if len(ids) >= needed:
                return ids[: needed - _PREFIX_MARGIN_TOKENS]
    return tokenizer(text, return_tensors="pt").input_ids[0]


class HFScorer:
    """Logits from a transformers model: the default engine behind :func:`compute_perplexity`.

    Any object with ``device``, ``dtype`` (names) and ``logits(inputs)`` returning
    [batch, seq, vocab] logits can stand in, so another engine (llama.cpp) scores the
    very same token ids under the very same protocol.
    """

    def __init__(self, model):
        param = next(model.parameters())
        self.model = model
        self.device = param.device
        self.dtype = str(param.dtype).replace("torch.", "")

    def logits(self, inputs):
        return self.model(inputs.to(self.device)).logits


# Called once per window with (window index, logits of the scored positions [n, vocab],
# their target ids [n]); the fidelity metrics use it to see every scored distribution.
LogitsObserver = Callable[[int, Any, Any], None]


def compute_perplexity(
    model,
    tokenizer,
    text: str,
    *,
    dataset: str,
    source: dict[str, Any] | None = None,
    protocol: str = "gptq",
    seq_len: int = 2048,
    stride: int | None = None,
    max_windows: int | None = None,
    max_context: int | None = None,
    batch_size: int = 4,
    show_progress: bool = True,
    observer: LogitsObserver | None = None,
) -> PerplexityResult:
    """Score ``text`` with ``model`` under ``protocol``; batched, no gradient.

    ``model`` is a transformers model or a scorer (see :class:`HFScorer`).
    """
    import torch
    from tqdm.auto import tqdm

    if max_context is not None and seq_len > max_context:
        raise PerplexityError(
            f"seq_len {seq_len} is longer than the model's context ({max_context}). "
            f"Set perplexity.seq_len <= {max_context}."
        )
    ids = _token_ids(tokenizer, text, protocol, seq_len, stride, max_windows)
    spans = windows_for(len(ids), protocol, seq_len, stride)
    if not spans or (protocol == "gptq" and len(ids) < seq_len):
        raise PerplexityError(
            f"{dataset}: {len(ids)} tokens is too small for one window of {seq_len}. Lower perplexity.seq_len."
        )
    if max_windows:
        spans = spans[:max_windows]
    scorer = model if hasattr(model, "logits") and not hasattr(model, "parameters") else HFScorer(model)
    device = scorer.device
    window_nll: list[float] = []
    window_tokens: list[int] = []
    scored: list[torch.Tensor] = []
    # Windows of equal length are batched; the last sliding window may be shorter.
    batches: list[list[tuple[int, int, int]]] = []
    for span in spans:
        if batches and len(batches[-1]) < batch_size and (batches[-1][0][1] - batches[-1][0][0]) == (span[1] - span[0]):
            batches[-1].append(span)
        else:
            batches.append([span])
    bar = tqdm(total=len(spans), desc=f"perplexity {dataset}", unit="win", disable=not show_progress)
    with torch.inference_mode():
        for batch in batches:
            inputs = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)
            logits = scorer.logits(inputs)
            nll = token_nll(logits[:, :-1], inputs[:, 1:])
            for row, (b, _e, first) in enumerate(batch):
                if observer is not None:
                    observer(len(window_nll), logits[row, first - b : -1], inputs[row, first - b + 1 :])
                keep = nll[row, first - b :]
                window_nll.append(keep.mean().item())
                window_tokens.append(keep.numel())
                scored.append(ids[first + 1 : _e])
            del logits
            bar.update(len(batch))
    bar.close()
    scored_ids = torch.cat(scored)
    nll_sum = sum(m * n for m, n in zip(window_nll, window_tokens, strict=True))
    n_scored = sum(window_tokens)
    if protocol == "gptq":
        ppl = math.exp(sum(window_nll) / len(window_nll))
    else:
        ppl = math.exp(nll_sum / n_scored)
    scored_text = tokenizer.decode(scored_ids, skip_special_tokens=True)
    n_words = max(len(scored_text.split()), 1)
    n_bytes = max(len(scored_text.encode("utf-8")), 1)
    digest = hashlib.sha256(scored_ids.to(torch.int64).numpy().tobytes()).hexdigest()
    dtype = scorer.dtype
    return PerplexityResult(
        dataset=dataset,
        source=source or {},
        protocol=protocol,
        seq_len=seq_len,
        stride=seq_len if protocol == "gptq" else (stride or seq_len // 2),
        n_windows=len(window_nll),
        n_tokens=n_scored,
        token_ids_sha256=digest,
        ppl=ppl,
        word_ppl=math.exp(nll_sum / n_words),
        bits_per_byte=nll_sum / (n_bytes * math.log(2)),
        nll_sum=nll_sum,
        n_words=n_words,
        n_bytes=n_bytes,
        dtype=dtype,
        device=str(device),
        window_nll=window_nll,
        window_tokens=window_tokens,
    )
