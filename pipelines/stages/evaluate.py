"""Evaluate stage: perplexity and lm-eval tasks on the reloaded checkpoint, loaded once.

Writes ``eval/perplexity.json``, ``eval/tasks.json`` and ``eval/samples/<task>.jsonl``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from evals.data import perplexity_text, resolve_data_dir
from evals.perplexity import compute_perplexity
from pipelines.environment import library_versions
from pipelines.quantizers import get_quantizer, loading
from pipelines.recipes import models
from pipelines.rundir import Manifest, stable_hash, write_json_atomic
from pipelines.stages.common import StageContext, run_stage

log = logging.getLogger(__name__)


def evaluate_key(ctx: StageContext) -> str:
    r = ctx.recipe
    return stable_hash({
        "quantize": Manifest(ctx.sdir).stage("quantize").get("key"),
        "perplexity": r.perplexity.model_dump(),
        "tasks": r.tasks.model_dump(),
        "data_dir": r.data_dir,
        "device": ctx.device,
        "versions": library_versions(),
    })


DEFAULT_PPL_SEQ_LEN = 2048


def perplexity_seq_len(configured: int | None, context: int) -> int:
    """The window length: as configured (checked against the context at planning), else 2048 capped."""
    return configured if configured is not None else min(DEFAULT_PPL_SEQ_LEN, context)


def run(ctx: StageContext) -> str:
    return run_stage(ctx, "evaluate", evaluate_key(ctx), lambda: _evaluate(ctx))


def _evaluate(ctx: StageContext) -> tuple[list[Path], dict]:
    recipe, device = ctx.recipe, ctx.device
    quantizer = get_quantizer(recipe.scheme.quantizer)
    data_dir = resolve_data_dir(recipe.data_dir)
    tokenizer = loading.load_tokenizer(ctx.base_source, recipe.model.revision)
    loading.count_load("evaluate")
    model = quantizer.load(ctx.checkpoint(), device, recipe.model.dtype, recipe.model.n_gpus)
    context = models.max_context(model.config, recipe.model)
    outputs: list[Path] = []

    ppl_cfg = recipe.perplexity
    seq_len = perplexity_seq_len(ppl_cfg.seq_len, context)
    results = {}
    for dataset in ppl_cfg.datasets:
        text, source = perplexity_text(dataset, data_dir)
        result = compute_perplexity(
            model, tokenizer, text, dataset=dataset, source=source, protocol=ppl_cfg.protocol,
            seq_len=seq_len, stride=ppl_cfg.stride, max_windows=ppl_cfg.max_windows,
            batch_size=ppl_cfg.batch_size, max_context=context, show_progress=ctx.show_progress,
        )
        results[dataset] = result.to_dict()
        log.info("%s/%s: ppl %s = %.3f over %d windows", ctx.model, ctx.scheme, dataset, result.ppl, result.n_windows)
    ppl_path = ctx.sdir.eval_dir / "perplexity.json"
    write_json_atomic(ppl_path, results)
    outputs.append(ppl_path)

    if recipe.tasks.names:
        from evals.harness import run_tasks

        tasks_dir = Path(recipe.tasks.tasks_dir).expanduser() if recipe.tasks.tasks_dir else None
        run_tasks(
            model, tokenizer, recipe.tasks.names, out_dir=ctx.sdir.eval_dir, data_dir=data_dir,
            tasks_dir=tasks_dir, limit=recipe.tasks.limit, batch_size=recipe.tasks.batch_size,
            max_length=context, show_progress=ctx.show_progress,
        )
        outputs.append(ctx.sdir.eval_dir / "tasks.json")
    return outputs, {}
