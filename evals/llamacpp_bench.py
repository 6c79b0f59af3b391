"""Speed and memory of a GGUF with llama.cpp's own ``llama-bench``, in qeval's result shapes.

``llama-bench`` measures prompt processing (``pp``: a prompt of N tokens in one batch) and
token generation (``tg``: N tokens one at a time, batch 1) with the thread count recorded.
They map onto qeval's speed rows at batch 1: prefill tok/s = pp, TTFT = prompt / pp, decode
tok/s = tg, inter-token latency = 1 / tg. Larger batch sizes are rows with status "skipped"
(llama-bench decodes one sequence). Peak RSS is that of the llama-bench process, which holds
the model; weights bytes are the GGUF's tensor bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from evals.speed import mean_decode_context_len, summarize
from pipelines.compute import thread_count

# llama.cpp's default KV cache type (f16), 2 bytes per element.
KV_BYTES = 2


def run_llama_bench(bench: Path, gguf: Path, *, prompt_len: int, gen_len: int, depth: int, reps: int,
                    threads: int) -> tuple[dict[str, Any], int]:
    """Run one llama-bench test (pp or tg); return its JSON row and the child's peak RSS."""
    argv = [str(bench), "-m", str(gguf), "-p", str(prompt_len), "-n", str(gen_len), "-d", str(depth),
            "-t", str(threads), "-r", str(reps), "-o", "json"]
    # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the largest child this
    # process ever had, e.g. the bandwidth probe), in KiB on Linux.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench failed (exit {proc.returncode}): {stderr.strip()[-1500:]}")
    return json.loads(stdout)[0], usage.ru_maxrss * 1024


def gguf_facts(gguf: Path) -> dict[str, Any]:
    """Tensor bytes, tensor types, KV bytes per token and unread input-embedding bytes of a GGUF."""
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(gguf)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def meta(name: str) -> int:
        field = reader.fields[f"{arch}.{name}"]
        return int(field.parts[field.data[0]][0])

    n_layer, n_embd, n_head = meta("block_count"), meta("embedding_length"), meta("attention.head_count")
    n_kv = meta("attention.head_count_kv") if f"{arch}.attention.head_count_kv" in reader.fields else n_head
    names = {t.name: t for t in reader.tensors}
    # With a separate output matrix, decode reads one row of token_embd, not all of it.
    unread = int(names["token_embd.weight"].n_bytes) if "output.weight" in names and "token_embd.weight" in names else 0
    return {
        "weights_bytes": sum(int(t.n_bytes) for t in reader.tensors),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "kv_bytes_per_token": 2 * n_layer * n_kv * (n_embd // n_head) * KV_BYTES,
        "unread_weight_bytes": unread,
        "architecture": arch,
    }


def measure(bench: Path, gguf: Path, *, batch_sizes, prompt_lens, gen_lens, iters: int,
            warmup: int, threads: int | None = None) -> dict[str, Any]:
    """speed.json's fields (without roofline/representative) and memory numbers, from llama-bench."""
    from evals.speed import device_name

    threads = threads or thread_count()  # the same count torch gets (pipelines.compute)
    reps = max(iters, 3)
    results, peak, build = [], 0, {}
    for prompt_len in prompt_lens:
        for gen_len in gen_lens:
            # Prefill of the prompt from an empty cache; decode after the prompt is in the cache
            # (llama-bench's depth), as qeval's own benchmark decodes after its prompt.
            pp, rss_pp = run_llama_bench(bench, gguf, prompt_len=prompt_len, gen_len=0, depth=0, reps=reps,
                                         threads=threads)
            tg, rss_tg = run_llama_bench(bench, gguf, prompt_len=0, gen_len=gen_len, depth=prompt_len,
                                         reps=reps, threads=threads)
            peak = max(peak, rss_pp, rss_tg)
            build = {k: pp.get(k) for k in ("build_commit", "build_number", "cpu_info", "backends", "n_threads",
                                             "n_batch", "n_ubatch", "type_k", "type_v", "flash_attn")}
            for batch_size in batch_sizes:
                point: dict[str, Any] = {"batch_size": batch_size, "prompt_len": prompt_len, "gen_len": gen_len}
                if batch_size != 1:
                    point.update({"status": "skipped", "error": "llama-bench decodes one sequence (batch 1)",
                                  "iterations": None, "elapsed_s": None, "mean_decode_context_len": None,
                                  "prefill_tok_s": None, "ttft_ms": None, "decode_tok_s": None, "itl_ms": None})
                else:
                    pp_ts, tg_ts = pp["samples_ts"], tg["samples_ts"]
                    point.update({
                        "status": "ok", "error": None, "iterations": len(tg_ts),
                        "elapsed_s": (sum(pp["samples_ns"]) + sum(tg["samples_ns"])) / 1e9,
                        "mean_decode_context_len": mean_decode_context_len(prompt_len, gen_len),
                        "prefill_tok_s": summarize(pp_ts),
                        "ttft_ms": summarize([1000.0 * prompt_len / t for t in pp_ts]),
                        "decode_tok_s": summarize(tg_ts),
                        "itl_ms": summarize([1000.0 / t for t in tg_ts]),
                    })
                results.append(point)
    settings = {
        "engine": "llama.cpp", "tool": "llama-bench", "threads": threads, "repetitions": reps,
        "warmup": "llama-bench's own warm-up run", "batch_sizes": list(batch_sizes),
        "prompt_lens": list(prompt_lens), "gen_lens": list(gen_lens), "llama_bench": build,
        "decode": "tg: llama-bench token generation at depth prompt_len (after the prompt), batch 1",
        "requested_iters": iters, "requested_warmup": warmup,
    }
    return {"device_kind": "cpu", "device_name": device_name("cpu"), "settings": settings,
            "results": results, "peak_rss_bytes": peak}
