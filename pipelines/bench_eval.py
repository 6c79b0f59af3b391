"""`make bench-eval`: how close the perplexity stage comes to a bare batched forward pass.

Both run on the same model, loaded once, over the same token windows, in one
process; the ratio is bare seconds / stage seconds (1.0 means the stage adds
nothing to the model's own forward time; the goal is >= 0.9).
"""

from __future__ import annotations

import time

from evals.data import perplexity_text, resolve_data_dir
from evals.perplexity import compute_perplexity
from pipelines.quantizers import loading
from pipelines.recipes import models


def bench_eval(model_name: str, *, seq_len: int = 512, n_windows: int = 16, batch_size: int = 4,
               repeats: int = 5) -> str:
    import torch

    recipe = models.resolve_model(model_name)
    source = models.source_path(recipe)
    device = loading.resolve_device("auto")
    # The dtype a sweep computes in on this machine (float32 where bf16 is not native), as the stage.
    dtype = models.resolve_compute(recipe, device).dtype
    tokenizer = loading.load_tokenizer(source, recipe.revision, trust_remote_code=recipe.trust_remote_code)
    model = loading.load_dense(source, dtype, device, revision=recipe.revision,
                               trust_remote_code=recipe.trust_remote_code, stage="bench-eval")
    text, _ = perplexity_text("wikitext2", resolve_data_dir(None))

    def stage() -> float:
        start = time.perf_counter()
        compute_perplexity(model, tokenizer, text, dataset="wikitext2", seq_len=seq_len, max_windows=n_windows,
                           batch_size=batch_size, show_progress=False)
        return time.perf_counter() - start

    ids = tokenizer(text[: seq_len * n_windows * 12], return_tensors="pt").input_ids[0][: seq_len * n_windows]
    windows = ids.view(n_windows, seq_len).to(device)

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n_windows, batch_size):
                model(windows[i : i + batch_size])
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    stage(), bare()  # warm-up
    # Interleaved, so that a drift of the machine's speed (another process, the clock) falls on both.
    stage_runs, bare_runs = [], []
    for _ in range(repeats):
        stage_runs.append(stage())
        bare_runs.append(bare())
    # The fastest run of each: on a shared machine, the one least disturbed by anything else.
    stage_s, bare_s = min(stage_runs), min(bare_runs)
    median_ratio = sorted(bare_runs)[repeats // 2] / sorted(stage_runs)[repeats // 2]
    tokens = n_windows * seq_len
    return (
        f"bench-eval on {recipe.name} ({dtype}, {device}, {torch.get_num_threads()} threads), {n_windows} windows x {seq_len} tokens, "
        f"batch {batch_size}, fastest of {repeats} interleaved runs\n"
        f"  perplexity stage : {stage_s:7.2f} s  {tokens / stage_s:8.0f} tok/s  (tokenization included)\n"
        f"  bare forward     : {bare_s:7.2f} s  {tokens / bare_s:8.0f} tok/s\n"
        f"  ratio bare/stage : {bare_s / stage_s:.3f}  (goal >= 0.9; of the medians {median_ratio:.3f})\n"
        f"  model loads      : {sum(loading.LOAD_COUNTS.values())}"
    )
