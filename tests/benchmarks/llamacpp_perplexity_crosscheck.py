"""qeval's perplexity on llama.cpp's logits against llama.cpp's own ``llama-perplexity`` (prints figures).

Run from the project root after ``make setup``:

    .venv/bin/python tests/benchmarks/llamacpp_perplexity_crosscheck.py [--chunks 16] [--ctx 512]

The two protocols differ, so three numbers are printed for one GGUF (default: the embedded
model's shared F16 GGUF) on WikiText-2's test text:

1. ``llama-perplexity -c CTX --chunks N``: llama.cpp tokenizes the text itself, cuts it into
   chunks of CTX tokens, puts BOS first in each chunk, and scores only the second half of each
   chunk (each scored token sees at least CTX/2 tokens of context).
2. The same protocol computed by qeval from the logits of ``evals.llamacpp_eval.LlamaCppScorer``
   on the HF tokenizer's ids: this isolates the engine from the protocol. It agrees with (1)
   to the extent that the two tokenizers agree.
3. qeval's GPTQ protocol (every token of each non-overlapping window is scored, the first with
   no context), the number every qeval scheme reports. It is higher than (1) and (2) because its
   early tokens have little context.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import tempfile
from pathlib import Path


def llama_perplexity(tool: Path, gguf: Path, text: str, ctx: int, chunks: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.txt"
        path.write_text(text, encoding="utf-8")
        out = subprocess.run([str(tool), "-m", str(gguf), "-f", str(path), "-c", str(ctx), "--chunks", str(chunks),
                              "-b", str(ctx)], capture_output=True, text=True, check=True)
    found = re.search(r"Final estimate: PPL = ([\d.]+)", out.stdout + out.stderr)
    if not found:
        raise RuntimeError(f"no final estimate in llama-perplexity's output:\n{(out.stdout + out.stderr)[-2000:]}")
    return float(found.group(1))


def second_half_perplexity(scorer, ids: list[int], bos: int, ctx: int, chunks: int) -> float:
    """llama-perplexity's protocol on given ids: BOS first in each chunk, score its second half."""
    import torch

    nll, count = 0.0, 0
    for c in range(chunks):
        chunk = ids[c * ctx:(c + 1) * ctx]
        if len(chunk) < ctx:
            break
        chunk = [bos, *chunk[1:]]
        logits = scorer.logits(torch.tensor([chunk]))[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        first = ctx // 2
        for pos in range(first, ctx - 1):
            nll -= float(logp[pos, chunk[pos + 1]])
            count += 1
    return math.exp(nll / count)


def main() -> None:
    from transformers import AutoTokenizer

    from evals.data import perplexity_text, resolve_data_dir
    from evals.llamacpp_eval import LlamaCppScorer
    from evals.perplexity import compute_perplexity
    from pipelines.llamacpp.convert import f16_gguf
    from pipelines.llamacpp.tools import tool_path
    from pipelines.recipes import embedded

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, help="default: the embedded model's F16 GGUF")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=16)
    args = ap.parse_args()
    source = str(embedded.checkpoint_dir())
    gguf = args.gguf or f16_gguf(source)
    text, _ = perplexity_text("wikitext2", resolve_data_dir(None))
    tokenizer = AutoTokenizer.from_pretrained(source)
    scorer = LlamaCppScorer(gguf, n_ctx=args.ctx, label="gguf")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: args.ctx * args.chunks]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else ids[0]
    out = {
        "gguf": gguf.name, "ctx": args.ctx, "chunks": args.chunks,
        "llama_perplexity": llama_perplexity(tool_path("llama-perplexity"), gguf, text, args.ctx, args.chunks),
        "qeval_second_half_protocol": round(second_half_perplexity(scorer, ids, bos, args.ctx, args.chunks), 4),
        "qeval_gptq_protocol": round(compute_perplexity(scorer, tokenizer, text, dataset="wikitext2", protocol="gptq",
                                                        seq_len=args.ctx, max_windows=args.chunks, batch_size=1,
                                                        show_progress=False).ppl, 4),
    }
    out["second_half_rel_diff"] = round(out["qeval_second_half_protocol"] / out["llama_perplexity"] - 1, 5)
    scorer.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
