"""`qeval list models|schemes|suites|tasks`: what exists, with one line each.

Schemes also say their library, weight bits and whether they run on this machine
(the quantizer's own ``check_environment``, the check a sweep's plan makes). That
check imports the scheme's library (bitsandbytes, gptqmodel, ...), so it runs only
for ``list schemes``; the other lists read YAML files alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KINDS = ("models", "schemes", "suites", "tasks")
# Weight bits of quantizers whose parameters do not say (the others have a `bits` parameter).
FIXED_BITS = {"int8": 8, "int8-w8a8": 8, "fp8": 8, "fp8-dynamic": 8, "nf4": 4}


@dataclass
class Row:
    name: str
    description: str
    extra: dict[str, str]


def _first_line(text: str) -> str:
    return " ".join(str(text or "").split())


def list_models() -> list[Row]:
    from pipelines.recipes import available, load_recipe

    rows = []
    for name in available("models"):
        data = load_recipe("models", name)
        rows.append(Row(name, _first_line(data.get("description")),
                        {"source": str(data.get("source", "")), "suite": str(data.get("default_suite", "standard"))}))
    return rows


def list_suites() -> list[Row]:
    from pipelines.recipes import available, load_recipe

    rows = []
    for name in available("suites"):
        data = load_recipe("suites", name)
        tasks = (data.get("tasks") or {}).get("names") or []
        rows.append(Row(name, _first_line(data.get("description")),
                        {"schemes": ",".join(data.get("schemes", [])), "tasks": ",".join(tasks) or "-"}))
    return rows


def list_schemes(device: str = "auto") -> list[Row]:
    """Every scheme recipe with its library, bits and whether it can run here on ``device``."""
    from pipelines.errors import QevalError, UnsupportedHere
    from pipelines.quantizers import get_quantizer
    from pipelines.quantizers.loading import resolve_device
    from pipelines.recipes import available, load_scheme

    resolved = resolve_device(device)
    rows = []
    for name in available("schemes"):
        scheme = load_scheme(name)
        quantizer = get_quantizer(scheme.quantizer)
        try:
            params = quantizer.parse_params(scheme.params, f"scheme {name} params")
            quantizer.check_environment(resolved, params)
            runs = f"yes ({resolved})"
        except UnsupportedHere as exc:
            runs = f"no: {exc}"
        except QevalError as exc:
            runs = f"recipe error: {exc}"
            params = None
        rows.append(Row(name, _first_line(scheme.description),
                        {"library": quantizer.library, "bits": scheme_bits(quantizer, scheme, params),
                         "runs here": runs}))
    return rows


def scheme_bits(quantizer, scheme, params) -> str:
    if quantizer.is_reference:
        return "16/32 (model dtype)"
    if quantizer.prequantized:
        return "the checkpoint's"
    bits = None
    if params is not None and hasattr(quantizer, "weight_bits"):
        bits = quantizer.weight_bits(params)
    bits = bits or scheme.params.get("bits") or FIXED_BITS.get(quantizer.key)
    return str(bits) if bits else "?"


def list_tasks(tasks_dir: str | None = None) -> list[Row]:
    """qeval's local task definitions, and those in ``tasks_dir`` (which win on a name clash)."""
    from evals.harness import BUILTIN_TASKS_DIR, discover_tasks

    defs = discover_tasks(Path(tasks_dir).expanduser() if tasks_dir else None)
    rows = []
    for d in sorted(defs.values(), key=lambda d: d.short_name):
        where = "qeval" if Path(d.root).resolve() == Path(BUILTIN_TASKS_DIR).resolve() else str(d.path)
        kind = f"group of {', '.join(d.members)}" if d.members else "task"
        rows.append(Row(d.short_name, _task_description(d.path),
                        {"kind": kind, "data": ",".join(d.datasets) or "Hub", "from": where}))
    return rows


def _task_description(path: Path) -> str:
    """The YAML's first comment line (qeval's task files start with what they reproduce)."""
    try:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                return line.lstrip("# ").strip()
            if line.strip():
                break
    except OSError:
        pass
    return ""


def rows_for(kind: str, *, tasks_dir: str | None = None, device: str = "auto") -> list[Row]:
    if kind == "models":
        return list_models()
    if kind == "schemes":
        return list_schemes(device)
    if kind == "suites":
        return list_suites()
    return list_tasks(tasks_dir)


def format_rows(kind: str, rows: list[Row]) -> str:
    """A name column, the extra columns, then the description (one line per entry)."""
    if not rows:
        return f"no {kind}"
    extras = list(rows[0].extra)
    widths = {k: max(len(k), *(len(r.extra.get(k, "")) for r in rows)) for k in extras if k != "runs here"}
    name_w = max(len("name"), *(len(r.name) for r in rows))
    head = f"{'name':<{name_w}}  " + "".join(f"{k:<{widths[k]}}  " for k in widths)
    tail = ["runs here"] if "runs here" in extras else []
    lines = [head + "  ".join(tail + ["description"])]
    for r in rows:
        line = f"{r.name:<{name_w}}  " + "".join(f"{r.extra.get(k, ''):<{widths[k]}}  " for k in widths)
        lines.append(line + "  ".join([r.extra[t] for t in tail] + [r.description]))
    notes = {
        "models": "A model can also be a Hub id (org/name), a checkpoint folder or your own model YAML file.",
        "schemes": "Give your own scheme as a YAML file path in SCHEMES / --schemes.",
        "suites": "Give your own suite as a YAML file path: SUITE=my_suite.yaml / --suite my_suite.yaml.",
        "tasks": "Other names are lm-eval's own tasks (`lm_eval ls tasks`); add yours with --tasks-dir / TASKS_DIR.",
    }
    return "\n".join(lines + ["", notes[kind]])
