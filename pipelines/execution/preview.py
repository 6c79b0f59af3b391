"""`qeval plan` and `qeval run --dry-run`: what a sweep would do, before it does it. Writes nothing.

Per scheme: the resolved recipe's key fields; for each stage whether its result is cached
or it will run, and why ("no result", "recipe changed: calibration.n_samples 16→32",
"library upgraded: torch 2.12.0→2.13.0", "stage failed earlier", "quantize reruns",
otherwise "inputs or code changed"); and an estimated time on this machine, from the
compute probe and the suite's token counts (pipelines.execution.estimate), else from earlier
runs (the manifests under the runs root), with a warning where it is over the suite's budget.

The plan comes from :func:`pipelines.execution.plan.plan`, which writes nothing; the rest
only reads run directories (manifest.json, recipe.yaml), never through a lock or a cache.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.execution import estimate as timing
from pipelines.execution.plan import PER_SCHEME_STAGES, Plan, SweepOptions, plan
from pipelines.rundir import Manifest, runs_root, scheme_dir
from pipelines.stages.common import StageContext

log = logging.getLogger(__name__)

# Recipe fields each stage's result depends on (dotted prefixes of ResolvedRecipe), for "recipe changed".
STAGE_FIELDS = {
    "quantize": ("model.source", "model.revision", "model.dtype", "model.n_gpus", "scheme.", "calibration.",
                 "data_dir", "device"),
    "evaluate": ("perplexity.", "tasks.", "model.max_context", "data_dir", "device"),
    "benchmark": ("benchmark.", "device"),
    "serve": ("serve.", "slo.", "hardware.", "device"),
}
MAX_CHANGES_SHOWN = 3


@dataclass
class StagePlan:
    stage: str
    will_run: bool
    reason: str  # "cached", why it runs, or why it is skipped
    estimate_s: float | None = None
    estimate_from: str = "unknown"


@dataclass
class SchemePlan:
    scheme: str
    fields: dict[str, str]
    stages: list[StagePlan]
    skipped: str | None = None


@dataclass
class SweepPreview:
    model: str
    suite: str
    schemes: list[SchemePlan]
    data_dir: str | None
    runs_dir: str
    tracking_uri: str | None
    executor: str
    notes: list[str] = field(default_factory=list)
    budget_min: float | None = None

    def estimate(self) -> tuple[float, int]:
        """Seconds of the stages that will run and have an estimate, plus the sweep's own
        overhead; how many stages have no estimate."""
        runs = [s for sp in self.schemes for s in sp.stages if s.will_run]
        schemes_to_run = sum(any(s.will_run for s in sp.stages) for sp in self.schemes)
        return (sum(s.estimate_s or 0.0 for s in runs) + timing.sweep_overhead_s(schemes_to_run),
                sum(s.estimate_s is None for s in runs))


# ----------------------------------------------------------------------------- building


def preview(opts: SweepOptions) -> SweepPreview:
    """Plan the sweep (validating everything, raising on bad input) and say what it would do."""
    return preview_plan(plan(opts), opts)


def preview_plan(p: Plan, opts: SweepOptions) -> SweepPreview:
    from pipelines.quantizers import get_quantizer

    history = StageHistory(runs_root())
    params = model_params(next(iter(p.recipes.values())).model) if p.recipes else None
    schemes = []
    for scheme, recipe in p.recipes.items():
        sdir = scheme_dir(p.model, scheme)
        fields = key_fields(recipe)
        if scheme in p.skipped:
            stages = [StagePlan(s, False, f"skipped: {p.skipped[scheme]}") for s in PER_SCHEME_STAGES]
            schemes.append(SchemePlan(scheme, fields, stages, p.skipped[scheme]))
            continue
        ctx = StageContext(p.model, scheme, recipe, sdir, force=opts.force, profile=opts.profile)
        stages = stage_plans(ctx, force=opts.force)
        rates = timing.rates_of(recipe, params)
        quantizer = get_quantizer(recipe.scheme.quantizer)
        for st in stages:
            if not st.will_run:
                continue
            if rates is not None and quantizer.engine == "transformers":  # llama.cpp has no torch probe
                st.estimate_s = timing.stage_seconds(st.stage, recipe, quantizer, rates, is_baseline=scheme == "baseline")
                st.estimate_from = "probe"
            else:
                st.estimate_s, st.estimate_from = history.estimate(p.model, scheme, st.stage, params)
        schemes.append(SchemePlan(scheme, fields, stages))
    recipe0 = next(iter(p.recipes.values()))
    tracking = None
    if opts.track:
        from pipelines.tracking import tracking_uri

        tracking = tracking_uri()
    pv = SweepPreview(p.model, p.suite, schemes, recipe0.data_dir, str(runs_root() / p.model), tracking,
                      opts.executor, budget_min=suite_budget(p.suite))
    seconds, _ = pv.estimate()
    if pv.budget_min and seconds > 60 * pv.budget_min:
        pv.notes.append(
            f"WARNING: about {format_duration(seconds)} on this machine, over suite {p.suite}'s budget of "
            f"{pv.budget_min:g} min ({_machine(recipe0)}). Faster: fewer schemes (SCHEMES=...), SUITE=smoke, "
            "or the GGUF schemes on llama.cpp.")
    return pv


def suite_budget(suite: str) -> float | None:
    from pipelines.recipes.resolve import load_suite

    try:
        return load_suite(suite).time_budget_min
    except Exception:  # the plan already validated the suite; a budget is only advice
        return None


def _machine(recipe) -> str:
    c = recipe.model.compute
    if c is None:
        return "no compute choice recorded"
    return f"{c.dtype} on {c.cpu_model or c.device}, {c.cpu_capability or c.device}, {c.threads} threads"


def key_fields(recipe) -> dict[str, str]:
    """The resolved recipe's fields a reader checks first."""
    s, cal, ppl, tasks, bench = recipe.scheme, recipe.calibration, recipe.perplexity, recipe.tasks, recipe.benchmark
    fields = {"quantizer": s.quantizer}
    if s.params:
        fields["params"] = ", ".join(f"{k}={v}" for k, v in s.params.items())
    if s.source:
        fields["source"] = s.source
    from pipelines.quantizers import get_quantizer

    quantizer = get_quantizer(s.quantizer)
    if getattr(quantizer, "calibrates", getattr(quantizer, "needs_calibration", False)):
        fields["calibration"] = f"{cal.dataset} {cal.n_samples}x{cal.seq_len} tokens, seed {cal.seed}"
    fields["perplexity"] = (f"{','.join(ppl.datasets)} {ppl.protocol} seq_len={ppl.seq_len or 'auto'} "
                            f"max_windows={ppl.max_windows or 'all'}")
    fields["tasks"] = (f"{','.join(tasks.names)} limit={tasks.limit}" if tasks.names else "none")
    fields["benchmark"] = (f"batch {bench.batch_sizes} prompt {bench.prompt_lens} gen {bench.gen_lens} "
                           f"iters={bench.iters}")
    srv, slo = recipe.serve, recipe.slo
    fields["serve"] = (f"{srv.engine} levels {srv.levels} x {srv.requests_per_level} requests, prompt "
                       f"{srv.prompt_tokens}±{srv.prompt_tokens_stdev} out {srv.output_tokens}±{srv.output_tokens_stdev}, "
                       f"SLO {', '.join(f'{k} {v:g}' for k, v in slo.targets().items()) or 'none'}"
                       if srv.enabled else "off")
    from pipelines.quantizers.loading import resolve_device

    fields["model"] = f"{recipe.model.source} ({recipe.model.dtype})"
    fields["device"] = f"{resolve_device(recipe.device)} (suite device: {recipe.device})"
    return fields


def stage_plans(ctx: StageContext, *, force: bool) -> list[StagePlan]:
    """Cached or will run, and why, for each stage of one scheme."""
    from pipelines.environment import library_versions
    from pipelines.stages.keys import benchmark_key, evaluate_key, quantize_key, serve_key

    manifest = Manifest(ctx.sdir)  # reads; never writes
    old_recipe = read_recipe(ctx.sdir.recipe_path)
    new_recipe = ctx.recipe.model_dump(mode="json")
    q_key = quantize_key(ctx)
    keys = {"quantize": q_key, "evaluate": evaluate_key(ctx, quantize=q_key),
            "benchmark": benchmark_key(ctx, quantize=q_key), "serve": serve_key(ctx, quantize=q_key)}
    out: list[StagePlan] = []
    quantize_runs = False
    for stage in PER_SCHEME_STAGES:
        entry = manifest.stage(stage)
        if not force and manifest.is_done(stage, keys[stage]):
            out.append(StagePlan(stage, False, "cached"))
            continue
        reason = rerun_reason(stage, entry, keys[stage], force=force, quantize_runs=quantize_runs,
                              old_recipe=old_recipe, new_recipe=new_recipe, versions=library_versions())
        out.append(StagePlan(stage, True, reason))
        quantize_runs = quantize_runs or stage == "quantize"
    return out


def rerun_reason(stage: str, entry: dict[str, Any], key: str, *, force: bool, quantize_runs: bool,
                 old_recipe: dict[str, Any] | None, new_recipe: dict[str, Any], versions: dict[str, str]) -> str:
    """Why a stage whose result is not usable will run; the first reason that applies."""
    if force:
        return "--force"
    status = entry.get("status")
    if not entry or status is None:
        return "no result"
    if status == "failed":
        return "stage failed earlier"
    if status == "running":
        return "interrupted earlier (left running)"
    if status == "skipped":
        return "skipped earlier"
    if stage != "quantize" and quantize_runs:
        return "quantize reruns"
    if entry.get("key") == key:
        return "outputs missing"
    changes = recipe_changes(old_recipe, new_recipe, STAGE_FIELDS[stage]) if old_recipe else []
    if changes:
        more = f" (+{len(changes) - MAX_CHANGES_SHOWN} more)" if len(changes) > MAX_CHANGES_SHOWN else ""
        return "recipe changed: " + ", ".join(changes[:MAX_CHANGES_SHOWN]) + more
    upgraded = version_changes(entry.get("versions") or {}, versions)
    if upgraded:
        return "library upgraded: " + ", ".join(upgraded)
    return "inputs or code changed"


def read_recipe(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def recipe_changes(old: dict[str, Any], new: dict[str, Any], prefixes: tuple[str, ...]) -> list[str]:
    """"calibration.n_samples 16→32" for each differing field under the prefixes."""
    a, b = flatten(old), flatten(new)
    changes = []
    for name in sorted(a.keys() | b.keys()):
        if not any(name == p or name.startswith(p) for p in prefixes):
            continue
        if a.get(name, "unset") != b.get(name, "unset"):
            changes.append(f"{name} {_short(a.get(name, 'unset'))}→{_short(b.get(name, 'unset'))}")
    return changes


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def version_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return [f"{dist} {old[dist]}→{new.get(dist, 'missing')}" for dist in sorted(old) if old[dist] != new.get(dist)]


# ----------------------------------------------------------------------------- estimates


class StageHistory:
    """Durations of finished stages under a runs root, read from the manifests."""

    def __init__(self, root: Path):
        self.root = root
        self.entries: list[tuple[str, str, str, float, float]] = []  # model, scheme, stage, duration_s, finished_at
        self._params: dict[str, int | None] = {}
        for path in sorted(root.glob("*/*/manifest.json")) if root.is_dir() else []:
            try:
                stages = json.loads(path.read_text()).get("stages", {})
            except (OSError, ValueError):
                continue
            for stage, entry in stages.items():
                if entry.get("status") == "done" and isinstance(entry.get("duration_s"), int | float):
                    self.entries.append((path.parent.parent.name, path.parent.name, stage,
                                         float(entry["duration_s"]), float(entry.get("finished_at") or 0)))

    def estimate(self, model: str, scheme: str, stage: str, params: int | None) -> tuple[float | None, str]:
        """From this scheme's last run of the stage, else another model's scaled by parameters."""
        same = [e for e in self.entries if e[:3] == (model, scheme, stage)]
        if same:
            return max(same, key=lambda e: e[4])[3], "last run"
        if params:
            for other in sorted({e[0] for e in self.entries if e[1:3] == (scheme, stage) and e[0] != model}):
                other_params = self.model_params(other, scheme)
                if other_params:
                    last = max((e for e in self.entries if e[:3] == (other, scheme, stage)), key=lambda e: e[4])
                    return last[3] * params / other_params, f"{other} scaled by parameters"
        return None, "unknown"

    def model_params(self, model: str, scheme: str) -> int | None:
        if model not in self._params:
            recipe = read_recipe(self.root / model / scheme / "recipe.yaml") or {}
            try:
                from pipelines.recipes import ModelRecipe

                self._params[model] = model_params(ModelRecipe.model_validate(recipe.get("model", {})))
            except Exception:  # an old or hand-edited recipe: no estimate from it
                self._params[model] = None
        return self._params[model]


def model_params(recipe) -> int | None:
    """Parameter count from the model's config, where it is on this machine (never downloads or converts)."""
    from pipelines.geometry import estimate_params
    from pipelines.recipes import embedded
    from pipelines.recipes.reachable import EMBEDDED_PREFIX, cached_config, is_local_source

    source = recipe.source
    if source.startswith(EMBEDDED_PREFIX):
        folder = embedded.checkpoint_dir() if embedded.is_prepared() else None
    elif is_local_source(source):
        folder = Path(source).expanduser()
    else:
        found = cached_config(source, recipe.revision)
        folder = Path(found).parent if found else None
    if folder is None or not (folder / "config.json").is_file():
        return None
    from transformers import AutoConfig

    try:
        return estimate_params(AutoConfig.from_pretrained(folder))
    except Exception:  # an architecture estimate_params does not know: no scaled estimate
        return None


# ----------------------------------------------------------------------------- text


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_text(pv: SweepPreview) -> str:
    seconds, unknown = pv.estimate()
    runs = sum(s.will_run for sp in pv.schemes for s in sp.stages)
    if runs == 0:
        return "nothing to run: every stage is cached"
    if unknown == runs:
        return f"unknown ({runs} stages to run, none run before on this machine)"
    extra = f" + {unknown} stage(s) never run here" if unknown else ""
    budget = f", suite budget {pv.budget_min:g} min" if pv.budget_min else ""
    return f"about {format_duration(seconds)}{extra} ({runs} stages to run{budget})"


def format_header(pv: SweepPreview) -> str:
    """The first lines of a sweep, and of `qeval plan`: what it will do."""
    lines = [
        f"qeval sweep: model {pv.model}, suite {pv.suite}, executor {pv.executor}",
        f"  schemes:   {', '.join(sp.scheme for sp in pv.schemes)}",
        f"  data:      {pv.data_dir or 'the Hub (no QEVAL_DATA_DIR)'}",
        f"  runs:      {pv.runs_dir}",
        f"  tracking:  {pv.tracking_uri or 'off (--no-track)'}",
        f"  estimated: {estimate_text(pv)}",
    ]
    return "\n".join(lines + [f"  {note}" for note in pv.notes])


def format_preview(pv: SweepPreview) -> str:
    lines = [format_header(pv), ""]
    # Fields every scheme shares (the suite's settings) once, then each scheme's own.
    shared = {k: v for k, v in pv.schemes[0].fields.items()
              if all(sp.fields.get(k) == v for sp in pv.schemes)} if len(pv.schemes) > 1 else {}
    if shared:
        lines.append("every scheme")
        lines += [f"    {name:<12}{value}" for name, value in shared.items()]
        lines.append("")
    for sp in pv.schemes:
        lines.append(f"{sp.scheme}")
        for name, value in sp.fields.items():
            if name not in shared:
                lines.append(f"    {name:<12}{value}")
        for st in sp.stages:
            state = "run " if st.will_run else "skip" if st.reason.startswith("skipped") else "cached"
            est = ""
            if st.will_run:
                est = (f"  ~{format_duration(st.estimate_s)} ({st.estimate_from})" if st.estimate_s is not None
                       else "  time unknown")
            why = "" if st.reason == "cached" else f"  {st.reason}"
            lines.append(f"    {st.stage:<10}{state:<7}{why}{est}")
        lines.append("")
    lines.append("Nothing was written. Run it with `make quantize` (same variables) or `qeval run` (same options).")
    return "\n".join(lines)
