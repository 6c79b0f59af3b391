"""Evaluate stage: perplexity and lm-eval tasks on the reloaded checkpoint, loaded once.

Writes ``eval/perplexity.json``, ``eval/fidelity.json``, ``eval/tasks.json`` and ``eval/samples/<task>.jsonl``.
They are written into a staging folder that replaces ``eval/`` whole when the stage succeeds:
a rerun without tasks or fidelity leaves no earlier checkpoint's tasks.json or fidelity.json
behind for the sign-off to judge, and a failed rerun leaves the old folder as it was.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from evals.data import perplexity_text, resolve_data_dir
from evals.perplexity import compute_perplexity
from evals.results import PerplexityFile, TasksResult
from pipelines.quantizers import get_quantizer, loading
from pipelines.recipes import models
from pipelines.rundir.atomic import atomic_directory
from pipelines.stages.common import StageContext, run_stage
from pipelines.stages.fidelity import fidelity_run
from pipelines.stages.keys import evaluate_key

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> str:
    return run_stage(ctx, "evaluate", evaluate_key(ctx), lambda: _evaluate(ctx))


def _evaluate(ctx: StageContext) -> tuple[list[Path], dict]:
    final = ctx.sdir.eval_dir
    with atomic_directory(final) as staging:
        written = _evaluate_into(ctx, staging)
    return [final / path.relative_to(staging) for path in written], {}


def _evaluate_into(ctx: StageContext, eval_dir: Path) -> list[Path]:
    recipe, device = ctx.recipe, ctx.device
    quantizer = get_quantizer(recipe.scheme.quantizer)
    data_dir = resolve_data_dir(recipe.data_dir)
    tokenizer = loading.load_tokenizer(ctx.base_source, recipe.model.revision,
                                     trust_remote_code=recipe.model.trust_remote_code)
    # Fidelity: the baseline's reference is made (or found) before this checkpoint is loaded.
    fidelity = fidelity_run(ctx, tokenizer, getattr(quantizer, "is_reference", False))
    held = contextlib.ExitStack()  # released after the perplexity pass (a failure frees it with the frame)
    if fidelity is not None:
        held.enter_context(fidelity.prepared())
        if quantizer.engine == "llama.cpp":  # the GGUF schemes' own floor: gguf-f16 against the HF baseline
            from pipelines.stages.engine import add_gguf_f16_floor

            add_gguf_f16_floor(ctx, fidelity)
    loading.count_load("evaluate")
    if quantizer.engine == "transformers":
        model = quantizer.load(ctx.checkpoint(), device, ctx.compute_dtype, recipe.model.n_gpus,
                               trust_remote_code=recipe.model.trust_remote_code)
    else:  # llama.cpp: a scorer on the GGUF; perplexity and tasks take it as they take a model
        from pipelines.stages.engine import open_for_eval

        model = open_for_eval(ctx, quantizer)
    context = models.max_context(model.config, recipe.model)
    outputs: list[Path] = []

    ppl_cfg = recipe.perplexity
    seq_len = models.perplexity_seq_len(ppl_cfg.seq_len, context)
    results = {}
    for dataset in ppl_cfg.datasets:
        text, source = perplexity_text(dataset, data_dir)
        result = compute_perplexity(
            model, tokenizer, text, dataset=dataset, source=source, protocol=ppl_cfg.protocol,
            seq_len=seq_len, stride=ppl_cfg.stride, max_windows=ppl_cfg.max_windows,
            batch_size=ppl_cfg.batch_size, max_context=context, show_progress=ctx.show_progress,
            observer=fidelity.observer(dataset) if fidelity is not None else None,
        )
        results[dataset] = result
        log.info("%s/%s: ppl %s = %.3f over %d windows", ctx.model, ctx.scheme, dataset, result.ppl, result.n_windows)
    outputs.append(PerplexityFile(results).write(eval_dir / PerplexityFile.FILE))
    held.close()
    if fidelity is not None:
        outputs += fidelity.write(eval_dir)

    if recipe.tasks.names:
        from evals.harness import run_tasks

        tasks_dir = Path(recipe.tasks.tasks_dir).expanduser() if recipe.tasks.tasks_dir else None
        run_tasks(
            model, tokenizer, recipe.tasks.names, out_dir=eval_dir, data_dir=data_dir,
            tasks_dir=tasks_dir, limit=recipe.tasks.limit, batch_size=recipe.tasks.batch_size,
            generation=recipe.tasks.generation.model_dump(),
            max_length=context, show_progress=ctx.show_progress,
            pretrained=ctx.checkpoint(), tokenizer_source=ctx.base_source,
        )
        outputs.append(eval_dir / TasksResult.FILE)
    return outputs
