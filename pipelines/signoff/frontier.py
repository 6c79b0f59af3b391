"""The ship frontier: each scheme's quality verdict against its serving capacity and cost.

One table (verdict, the first perplexity gate's estimate with its interval, capacity at the SLO,
goodput, $ per 1M output tokens, engine), one plot ($/1M against quality, capacity as labels)
and one line naming the cheapest scheme that passes every gate, or saying that none does and why.
"""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path
from typing import Any

from pipelines.signoff.outcome import BASELINE, FAIL, PASS, SKIPPED

log = logging.getLogger(__name__)

PLOT_NAME = "ship_frontier"
HEADERS = ["Scheme", "Verdict", "Quality (ppl increase, interval)", "Capacity @ SLO", "Goodput req/s",
           "$/1M out tokens", "KV seqs", "Engine"]


def _quality(verdict: dict[str, Any]) -> tuple[float | None, str]:
    for gate in verdict.get("gates", []):
        if gate["metric"].startswith("ppl") and gate.get("estimate") is not None:
            ci = gate.get("ci")
            shown = f"{gate['estimate']:+.1%}" + (f" [{ci[0]:+.1%}, {ci[1]:+.1%}]" if ci else "")
            return gate["estimate"], shown
    return None, "-"


def build(baseline, evidence: list, result: dict[str, Any], plot_dir: Path) -> dict[str, Any]:
    """The frontier section of signoff.json (and its plot under ``plot_dir``)."""
    verdicts = {s["scheme"]: s for s in result.get("schemes", [])}
    rows = []
    for ev in [baseline, *evidence]:
        serve = ev.serve
        verdict = verdicts.get(ev.scheme, {"verdict": BASELINE if ev is baseline else "-", "gates": []})
        q, shown = (0.0, "reference") if ev is baseline else _quality(verdict)
        rows.append({"scheme": ev.scheme, "verdict": verdict["verdict"], "quality": q, "quality_text": shown,
                     "capacity": getattr(serve, "capacity", None),
                     "capacity_lower_bound": getattr(serve, "capacity_lower_bound", False), "goodput_rps": getattr(serve, "goodput_rps", None),
                     "usd_per_m": getattr(serve, "usd_per_m", None), "kv_sequences": getattr(serve, "kv_sequences", None),
                     "engine": getattr(serve, "engine", None), "serve_note": getattr(serve, "skip", None),
                     # FAIL before INCONCLUSIVE: the pick line names the first few
                     "failed_gates": [g["gate"] for g in sorted(verdict.get("gates", []), key=lambda g: g["verdict"] != FAIL)
                                      if g["verdict"] not in (PASS, SKIPPED)]})
    out = {"rows": rows, "pick": pick_line(rows)}
    out["plot"] = str(_plot(rows, plot_dir)) if rows else None
    return out


def pick_line(rows: list[dict[str, Any]]) -> str:
    """The cheapest scheme passing every gate, or none and why."""
    candidates = [r for r in rows if r["verdict"] == PASS]
    # Serving numbers the serve gates SKIP (another device or engine, an external endpoint) rank nothing.
    priced = [r for r in candidates if r["usd_per_m"] is not None and not r["serve_note"]]
    if priced:
        best = min(priced, key=lambda r: r["usd_per_m"])
        return (f"Ship {best['scheme']}: the cheapest scheme that passes every gate, ${best['usd_per_m']:.3g} per 1M "
                f"output tokens at capacity {best['capacity']} ({best['engine']}).")
    if candidates:
        names = ", ".join(r["scheme"] for r in candidates)
        return (f"{names} pass every gate, but none has a serving cost that counts (not served, served where "
                "the serve gates skip it, no price, or capacity 0).")
    why = "; ".join(f"{r['scheme']}: {r['verdict']} ({', '.join(r['failed_gates'][:3]) or r['serve_note'] or '-'})"
                    for r in rows if r["verdict"] != BASELINE)
    return f"No scheme passes every gate: {why or 'no scheme was judged'}."


def _cell(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table_rows(frontier: dict[str, Any]) -> list[list[str]]:
    return [[r["scheme"], r["verdict"], r["quality_text"],
             ("≥" if r.get("capacity_lower_bound") else "") + _cell(r["capacity"], "d"), _cell(r["goodput_rps"], ".3g"),
             _cell(r["usd_per_m"], ".3g"), _cell(r["kv_sequences"], "d"), r["engine"] or (r["serve_note"] or "-")]
            for r in frontier.get("rows", [])]


CAPACITY_NOTE = ("Capacity: the highest number of concurrent streams whose p99 latencies met every SLO; "
                 "≥ marks a scheme that met it at the highest level tried (add levels to find its limit).")


def markdown(frontier: dict[str, Any] | None) -> list[str]:
    if not frontier:
        return []
    lines = ["", "## Ship frontier", "", f"**{frontier['pick']}**", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table_rows(frontier)]
    lines += ["", CAPACITY_NOTE]
    if frontier.get("plot"):
        lines += ["", f"![Ship frontier: $ per 1M tokens against quality]({frontier['plot']})"]
    return lines


def render_html(frontier: dict[str, Any] | None) -> str:
    if not frontier:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table_rows(frontier))
    img = ""
    plot = frontier.get("plot")
    if plot and Path(plot).is_file():
        data = base64.b64encode(Path(plot).read_bytes()).decode("ascii")
        img = f'<img class="pareto" alt="Ship frontier" src="data:image/png;base64,{data}">'
    return (f'<h2>Ship frontier</h2><p class="pick"><strong>{html.escape(frontier["pick"])}</strong></p>'
            f'<table id="ship-frontier"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
            f'<p>{html.escape(CAPACITY_NOTE)}</p>{img}')


def _plot(rows: list[dict[str, Any]], plot_dir: Path) -> Path | None:
    """$ per 1M output tokens (x) against the perplexity increase (y); labels give the capacity."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [r for r in rows if r["usd_per_m"] is not None and r["quality"] is not None]
    if not points:
        return None
    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = {PASS: "tab:green", BASELINE: "tab:blue"}
    for r in points:
        ax.scatter(r["usd_per_m"], r["quality"] * 100, color=colors.get(r["verdict"], "tab:red"), s=40)
        ax.annotate(f"{r['scheme']} (cap {r['capacity']})", (r["usd_per_m"], r["quality"] * 100),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("$ per 1M output tokens at capacity (lower is better)")
    ax.set_ylabel("perplexity increase over baseline, %")
    ax.set_title("Ship frontier (green: passes every gate)")
    ax.grid(alpha=0.3)
    plot_dir.mkdir(parents=True, exist_ok=True)
    path = plot_dir / f"{PLOT_NAME}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
