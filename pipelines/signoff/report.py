"""Render the sign-off (signoff.json content) as Markdown and as one self-contained HTML file.

``context`` describes the run, and every key is optional:

- ``model``, ``suite``, ``git_commit``, ``generated_at``: strings shown in the header.
- ``protocols``: section -> rows, e.g. ``{"perplexity": {"wikitext2": {"source": ..., "seq_len": 2048}},
  "tasks": {"arc_easy": {"limit": 200, "n_samples": 200}}}``; a section may also be a flat mapping.
- ``library_versions`` and ``hardware``: flat mappings (``pipelines.environment``).
- ``caveats``: list of strings (baseline already quantized, cost from emulation, task limits...).
- ``pareto_png``: path of the Pareto plot relative to the Markdown file (Markdown only; the HTML
  embeds the PNG it is given as base64, so it needs no other file, no network and no script).

Schemes that were NOT JUDGED (a stage failed, was skipped, or is stale) get their own section
with the reason, and the overall verdict is then INCOMPLETE (exit code 4).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.signoff import frontier
from pipelines.signoff.fidelity_report import fidelity_tables

VERDICT_COLUMNS = ("PASS", "FAIL", "INCONCLUSIVE", "SKIPPED")
GATE_HEADERS = (
    "Scheme",
    "Gate",
    "Metric",
    "Baseline",
    "Scheme value",
    "Δ",
    "Criterion",
    "Estimate",
    "CI",
    "Verdict",
    "n",
    "n needed",
    "Note",
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #1f2328; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-weight: 600; border-radius: 4px; padding: 0.1rem 0.4rem; }
.v-pass { background: #dafbe1; color: #116329; } .v-fail { background: #ffebe9; color: #a40e26; }
.v-inconclusive { background: #fff8c5; color: #7d4e00; } .v-skipped { background: #eaeef2; color: #57606a; }
.v-baseline { background: #ddf4ff; color: #0a3069; }
.v-not-judged, .v-incomplete { background: #fbefff; color: #6e40c9; }
.overall { font-size: 1.2rem; }
.scroll { overflow-x: auto; }
table#gates { font-size: 0.8rem; } table#gates td.note { min-width: 14rem; }
img.pareto { max-width: 100%; border: 1px solid #d0d7de; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
"""


def render_markdown(signoff: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """Return the sign-off as a Markdown document."""
    model = str(context.get("model") or "unknown model")
    lines = [f"# qeval sign-off — {_md(model)}", ""]
    lines.append(f"**Overall: {signoff['overall']}** (exit code {signoff['exit_code']})")
    lines.append("")
    for label, value in _header_items(signoff, context):
        lines.append(f"- {label}: {_md(value)}")
    lines += ["", "## Verdicts", ""]
    lines += _md_table(
        ["Scheme", "Verdict", *(c.title() for c in VERDICT_COLUMNS), "Note"], _verdict_rows(signoff)
    )
    not_judged = _not_judged_rows(signoff)
    if not_judged:
        lines += ["", "## Not judged", "", _NOT_JUDGED_TEXT, ""]
        lines += _md_table(["Scheme", "Reason"], not_judged)
    lines += ["", "## Gates", ""]
    gate_rows = _gate_rows(signoff)
    lines += _md_table(GATE_HEADERS, gate_rows) if gate_rows else ["No gated scheme."]
    for title, headers, rows, note in fidelity_tables(signoff):
        lines += ["", f"## {_md(title)}", "", _md(note), "", *_md_table(headers, rows)]
    lines += ["", "## Quality versus cost", ""]
    if context.get("pareto_png"):
        lines.append(f"![Pareto plot: quality versus cost per scheme]({context['pareto_png']})")
    else:
        lines.append("No Pareto plot was produced.")
    lines += frontier.markdown(signoff.get("ship_frontier"))
    lines += ["", "## Method", "", _md(signoff.get("method", "")), ""]
    lines += ["## Protocols", ""]
    for section, table in _protocol_tables(context):
        lines += [f"### {_md(section)}", "", *_md_table(*table), ""]
    if not context.get("protocols"):
        lines += ["No protocol recorded.", ""]
    lines += ["## Environment", ""]
    for title, mapping in _environment(context):
        lines += [f"### {title}", "", *_md_table(*_mapping_table(mapping)), ""]
    lines += ["## Caveats", ""]
    caveats = list(context.get("caveats") or [])
    lines += [f"- {_md(c)}" for c in caveats] or ["None recorded."]
    return "\n".join(lines) + "\n"


def render_html(
    signoff: Mapping[str, Any], context: Mapping[str, Any], pareto_png: Path | None
) -> str:
    """Return the sign-off as one HTML page with inline CSS and the Pareto PNG embedded."""
    model = str(context.get("model") or "unknown model")
    title = f"qeval sign-off — {model}"
    overall = str(signoff["overall"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
        f'<p class="overall">Overall: {_verdict_span(overall)} (exit code {_h(signoff["exit_code"])})</p>',
        "<dl>",
        *(
            f"<dt>{_h(label)}</dt><dd>{_h(value)}</dd>"
            for label, value in _header_items(signoff, context)
        ),
        "</dl>",
        "<h2>Verdicts</h2>",
        _html_verdict_table(signoff),
        *_html_not_judged(signoff),
        "<h2>Gates</h2>",
        _html_gate_table(signoff),
        *(f"<h2>{_h(t)}</h2><p>{_h(note)}</p>{_html_table(h, r)}" for t, h, r, note in fidelity_tables(signoff)),
        "<h2>Quality versus cost</h2>",
        _html_pareto(pareto_png),
        frontier.render_html(signoff.get("ship_frontier")),
        "<h2>Method</h2>",
        f"<p>{_h(signoff.get('method', ''))}</p>",
        "<h2>Protocols</h2>",
    ]
    tables = _protocol_tables(context)
    for section, (headers, rows) in tables:
        parts += [f"<h3>{_h(section)}</h3>", _html_table(headers, rows)]
    if not tables:
        parts.append("<p>No protocol recorded.</p>")
    parts.append("<h2>Environment</h2>")
    for title_, mapping in _environment(context):
        parts += [f"<h3>{_h(title_)}</h3>", _html_table(*_mapping_table(mapping))]
    parts.append("<h2>Caveats</h2>")
    caveats = list(context.get("caveats") or [])
    if caveats:
        parts += ["<ul>", *(f"<li>{_h(c)}</li>" for c in caveats), "</ul>"]
    else:
        parts.append("<p>None recorded.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- shared content ---------------------------------------------------------------------------


def _header_items(signoff: Mapping[str, Any], context: Mapping[str, Any]) -> list[tuple[str, str]]:
    items = [
        ("Suite", context.get("suite")),
        ("Compute", _compute_text(context.get("compute"))),
        ("Baseline", signoff.get("baseline")),
        ("qeval commit", context.get("git_commit")),
        ("Generated", context.get("generated_at")),
        ("Confidence", _fmt(signoff.get("confidence"))),
        ("Bootstrap", f"{signoff.get('n_resamples')} resamples, seed {signoff.get('seed')}"),
        ("Exit code precedence", signoff.get("exit_code_precedence")),
    ]
    return [(label, str(value)) for label, value in items if value is not None]


def _compute_text(compute: Mapping[str, Any] | None) -> str | None:
    """The compute dtype, where, and why: every number in the report was computed so."""
    if not compute:
        return None
    where = compute.get("cpu_capability") or compute.get("gpu_name") or ""
    return (f"{compute.get('dtype')} on {compute.get('device')} ({compute.get('cpu_model') or where}, "
            f"{where}, {compute.get('threads')} threads; stored as {compute.get('storage_dtype')}): "
            f"{compute.get('reason')}")


def _verdict_rows(signoff: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for scheme in signoff.get("schemes", []):
        counts = scheme.get("counts") or {}
        rows.append(
            [
                str(scheme["scheme"]),
                str(scheme["verdict"]),
                *(str(counts.get(c, 0)) for c in VERDICT_COLUMNS),
                scheme.get("note") or "",
            ]
        )
    return rows


_NOT_JUDGED_TEXT = (
    "These schemes were not judged: a stage failed, was skipped or is stale (its recipe or code "
    "changed since it ran), so their files are not evidence. Rerun the sweep to judge them."
)


def _not_judged_rows(signoff: Mapping[str, Any]) -> list[list[str]]:
    return [[str(s), str(why)] for s, why in (signoff.get("not_judged") or {}).items()]


def _gate_rows(signoff: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for scheme in signoff.get("schemes", []):
        for g in scheme.get("gates", []):
            ci = g.get("ci")
            rows.append(
                [
                    str(scheme["scheme"]),
                    str(g["gate"]),
                    str(g["metric"]),
                    _fmt(g.get("baseline")),
                    _fmt(g.get("value")),
                    _fmt(g.get("delta"), signed=True),
                    f"{g.get('quantity', '')} {'≤' if g.get('comparison') == '<=' else '≥'} {_fmt(g.get('threshold'))}",
                    _fmt(g.get("estimate")),
                    "—" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]",
                    str(g["verdict"]),
                    _fmt(g.get("n")),
                    _fmt_needed(g),
                    g.get("note") or "",
                ]
            )
    return rows


def _protocol_tables(
    context: Mapping[str, Any],
) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    protocols = context.get("protocols") or {}
    if not isinstance(protocols, Mapping):
        return [("protocols", (["Value"], [[_fmt(protocols)]]))]
    tables = []
    for section, rows in protocols.items():
        tables.append((str(section), _mapping_table(rows)))
    return tables


def _environment(context: Mapping[str, Any]) -> list[tuple[str, Mapping]]:
    return [
        ("Library versions", context.get("library_versions") or {}),
        ("Hardware", context.get("hardware") or {}),
    ]


def _mapping_table(mapping: Any) -> tuple[list[str], list[list[str]]]:
    """Turn a mapping of mappings into columns, or a flat mapping into key/value rows."""
    if not isinstance(mapping, Mapping) or not mapping:
        return ["Value"], [[_fmt(mapping) if mapping else "none recorded"]]
    if all(isinstance(v, Mapping) for v in mapping.values()):
        columns: list[str] = []
        for row in mapping.values():
            columns += [k for k in row if k not in columns]
        rows = [[str(name), *(_fmt(row.get(c)) for c in columns)] for name, row in mapping.items()]
        return ["Name", *map(str, columns)], rows
    return ["Name", "Value"], [[str(k), _fmt(v)] for k, v in mapping.items()]


def _fmt(value: Any, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return {"inf": "∞", "-inf": "-∞"}.get(value, value)
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value).replace("inf", "∞")
        spec = "+" if signed else ""
        return f"{value:{spec}.1f}" if abs(value) >= 1000 else f"{value:{spec}.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return json.dumps(value, default=str)


def _fmt_needed(gate: Mapping[str, Any]) -> str:
    if gate.get("verdict") != "INCONCLUSIVE":
        return "—"
    needed = gate.get("n_needed")
    if needed is not None:
        return f"≈ {needed}"
    if "cannot be settled" in (gate.get("note") or ""):
        return f"more than the dataset has ({_fmt(gate.get('n_available'))})"
    return "∞"


# --- Markdown ---------------------------------------------------------------------------------


def _md(text: Any) -> str:
    # Keep a cell on one line and stop pipes and angle brackets from being read as markup.
    return (
        str(text)
        .replace("\r", " ")
        .replace("\n", " ")
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


def _md_table(headers: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out


# --- HTML -------------------------------------------------------------------------------------


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _verdict_span(verdict: str) -> str:
    return f'<span class="verdict v-{_h(verdict.lower().replace(" ", "-"))}">{_h(verdict)}</span>'


def _html_verdict_table(signoff: Mapping[str, Any]) -> str:
    headers = ["Scheme", "Verdict", *(c.title() for c in VERDICT_COLUMNS), "Note"]
    body = []
    for row in _verdict_rows(signoff):
        scheme, verdict, *counts, note = row
        cells = [f"<td>{_h(scheme)}</td>", f"<td>{_verdict_span(verdict)}</td>"]
        cells += [f'<td class="num">{_h(c)}</td>' for c in counts]
        cells.append(f"<td>{_h(note)}</td>")
        body.append(
            f'<tr data-scheme="{_h(scheme)}" data-verdict="{_h(verdict)}">{"".join(cells)}</tr>'
        )
    return _html_table_shell("verdicts", headers, body)


def _html_not_judged(signoff: Mapping[str, Any]) -> list[str]:
    rows = _not_judged_rows(signoff)
    if not rows:
        return []
    body = [f'<tr data-scheme="{_h(s)}"><td>{_h(s)}</td><td>{_h(why)}</td></tr>' for s, why in rows]
    return ["<h2>Not judged</h2>", f"<p>{_h(_NOT_JUDGED_TEXT)}</p>",
            _html_table_shell("not-judged", ["Scheme", "Reason"], body)]


def _html_gate_table(signoff: Mapping[str, Any]) -> str:
    rows = _gate_rows(signoff)
    if not rows:
        return "<p>No gated scheme.</p>"
    verdict_col, note_col = GATE_HEADERS.index("Verdict"), GATE_HEADERS.index("Note")
    numeric = {
        GATE_HEADERS.index(h)
        for h in ("Baseline", "Scheme value", "Δ", "Estimate", "n", "n needed")
    }
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i == verdict_col:
                cells.append(f"<td>{_verdict_span(cell)}</td>")
            else:
                cls = ' class="num"' if i in numeric else ' class="note"' if i == note_col else ""
                cells.append(f"<td{cls}>{_h(cell)}</td>")
        body.append(
            f'<tr data-scheme="{_h(row[0])}" data-gate="{_h(row[1])}">{"".join(cells)}</tr>'
        )
    return '<div class="scroll">' + _html_table_shell("gates", list(GATE_HEADERS), body) + "</div>"


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    body = ["<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>" for row in rows]
    return _html_table_shell(None, headers, body)


def _html_table_shell(table_id: str | None, headers: list[str], body: list[str]) -> str:
    id_attr = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    return (
        f"<table{id_attr}><thead><tr>{head}</tr></thead><tbody>\n"
        + "\n".join(body)
        + "\n</tbody></table>"
    )


def _html_pareto(pareto_png: Path | None) -> str:
    if pareto_png is None or not Path(pareto_png).is_file():
        return "<p>No Pareto plot was produced.</p>"
    data = base64.b64encode(Path(pareto_png).read_bytes()).decode("ascii")
    return (
        '<img class="pareto" alt="Pareto plot: quality versus cost per scheme" '
        f'src="data:image/png;base64,{data}">'
    )
