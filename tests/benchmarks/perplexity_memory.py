"""Peak memory of one perplexity window, before and after chunking the NLL (not a test; prints figures).

Run from the project root:

    .venv/bin/python tests/benchmarks/perplexity_memory.py [--seq-len 2048] [--vocab 128256] [--device cpu]

A synthetic Llama with a 128k vocabulary (one small layer, bf16, random weights) scores
one window of ``seq_len`` tokens. "before" is the evaluator's old formula, the whole
[batch, seq, vocab] logits turned into fp32 and then into fp32 log-probabilities by one
``cross_entropy``; "after" is ``evals.perplexity.token_nll``. Each variant runs in a
fresh process, so one's allocations cannot hide the other's peak. On a CPU the figure
is the process peak RSS over the window (``evals.memory.PeakRSS``); on CUDA it is the
allocator's peak. The forward's own bf16 logits are in both figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


def _model(vocab: int, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16).eval()


def _old_nll(logits, targets):
    """The evaluator's formula before chunking: all positions' logits in fp32 at once."""
    import torch

    return torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), reduction="none"
    ).view(targets.shape)


def measure(variant: str, seq_len: int, vocab: int, device: str) -> dict:
    """Score one window with ``variant`` ("before" or "after"); return its peak memory and NLL sum."""
    import torch

    from evals.memory import PeakRSS
    from evals.perplexity import token_nll

    model = _model(vocab, device)
    ids = torch.randint(0, vocab, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    nll_fn = _old_nll if variant == "before" else token_nll
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_bytes = torch.cuda.memory_allocated()
    with PeakRSS() as rss, torch.inference_mode():
        logits = model(ids).logits
        nll = nll_fn(logits[:, :-1], ids[:, 1:])
        nll_sum = float(nll.sum())
        del logits, nll
    record = {"variant": variant, "peak_rss_bytes": rss.peak_bytes, "peak_rss_exact": rss.exact,
              "nll_sum": nll_sum}
    if device == "cuda":
        record["cuda_peak_over_model_bytes"] = torch.cuda.max_memory_allocated() - base_bytes
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=["before", "after"], help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.seq_len, args.vocab, args.device)))
        return
    logits_fp32_bytes = args.seq_len * args.vocab * 4
    print(f"one window: seq_len {args.seq_len}, vocab {args.vocab}, device {args.device}; "
          f"fp32 logits of the window = {logits_fp32_bytes / GIB:.2f} GiB")
    results = {}
    for variant in ("before", "after"):
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--seq-len", str(args.seq_len),
             "--vocab", str(args.vocab), "--device", args.device],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    key = "cuda_peak_over_model_bytes" if args.device == "cuda" else "peak_rss_bytes"
    label = "CUDA peak allocated over the model" if args.device == "cuda" else "process peak RSS"
    for variant, record in results.items():
        print(f"{variant:>6}: {label} {record[key] / GIB:.2f} GiB  (nll sum {record['nll_sum']:.6f})")
    saved = results["before"][key] - results["after"][key]
    print(f" saved: {saved / GIB:.2f} GiB per window; |nll sum difference| = "
          f"{abs(results['before']['nll_sum'] - results['after']['nll_sum']):.2e}")


if __name__ == "__main__":
    main()
