"""Cost of the fidelity measurement per 1,000 scored tokens (not a test; prints figures).

Run from the project root:

    .venv/bin/python tests/benchmarks/fidelity_cost.py [--vocab 49152] [--seq-len 512] [--windows 4] [--k 32]

Synthetic logits shaped like one model's (the embedded model has a 49,152-token vocabulary)
go through the two observers of ``evals.fidelity``: recording the baseline's reference
(once per model) and comparing a scheme with it (once per scheme). It prints the seconds of
each per 1,000 tokens, on top of the forward pass perplexity already does, and the bytes the
stored reference takes per 1,000 tokens for top-k storage and for full float32 rows.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    import torch

    from evals.fidelity import FidelityAccumulator, ReferenceRecorder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--k", type=int, default=32)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    n = args.seq_len - 1
    base = [torch.randn(n, args.vocab, generator=gen) * 3 for _ in range(args.windows)]
    other = [b + 0.3 * torch.randn(b.shape, generator=gen) for b in base]
    targets = [torch.randint(0, args.vocab, (n,), generator=gen) for _ in range(args.windows)]
    tokens = n * args.windows
    out = {"vocab": args.vocab, "tokens": tokens, "k": args.k}
    for label, k in ((f"top{args.k}", args.k), ("full_rows", None)):
        if k is None and args.vocab * tokens * 4 > 2**31:
            out[label] = {"bytes_per_1k_tokens": 1000 * (4 * args.vocab + 8), "note": "too large to time here"}
            continue
        rec = ReferenceRecorder(k)
        t0 = time.perf_counter()
        for i in range(args.windows):
            rec(i, base[i].to(torch.bfloat16), targets[i])
        t1 = time.perf_counter()
        acc = FidelityAccumulator(rec.reference)
        for i in range(args.windows):
            acc(i, other[i].to(torch.bfloat16), targets[i])
        t2 = time.perf_counter()
        out[label] = {
            "record_s_per_1k_tokens": round(1000 * (t1 - t0) / tokens, 4),
            "compare_s_per_1k_tokens": round(1000 * (t2 - t1) / tokens, 4),
            "bytes_per_1k_tokens": round(1000 * rec.reference.nbytes() / tokens),
            "kl_mean": acc.summary()["kl_base_scheme"]["mean"],
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
