"""Sweep plots: quality/cost Pareto fronts and per-task accuracy recovery.

Rows are dicts with a ``scheme`` key and the metric names of
``pipelines.signoff.metrics`` (the rows of ``metrics.sweep_rows`` or of
``tracking.compare``). Figures are drawn with matplotlib's object API on the
Agg canvas, so nothing here needs a display or touches pyplot's global state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.signoff.metrics import BASELINE_SCHEME, speed_metric_at

log = logging.getLogger(__name__)

PLOTS_DIRNAME = "plots"
PPL_VS_WEIGHTS = "ppl_vs_weights"
ACC_VS_DECODE = "acc_vs_decode"
RECOVERY = "recovery"
PREFERRED_PPL_DATASET = "wikitext2"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pareto_frontier(
    points: Sequence[tuple[float, float]], *, minimize_x: bool = True, minimize_y: bool = True
) -> list[int]:
    """Return the indices of the non-dominated points, ordered by x.

    A point is dominated when another is at least as good on both axes and
    strictly better on one. Points with a missing or non-finite coordinate are
    never on the frontier. Identical points are all kept.
    """
    sign_x = 1.0 if minimize_x else -1.0
    sign_y = 1.0 if minimize_y else -1.0
    valid = [
        (i, sign_x * x, sign_y * y)
        for i, (x, y) in enumerate(points)
        if _finite(x) and _finite(y)
    ]
    frontier = []
    for i, x, y in valid:
        dominated = any(
            (ox <= x and oy <= y) and (ox < x or oy < y) for j, ox, oy in valid if j != i
        )
        if not dominated:
            frontier.append(i)
    return sorted(frontier, key=lambda i: (points[i][0], points[i][1]))


def ppl_dataset(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Pick the perplexity dataset to plot: wikitext2 when present, else the first by name."""
    names = sorted({k.split(".", 1)[1] for row in rows for k in row if k.startswith("ppl.")})
    if not names:
        return None
    return PREFERRED_PPL_DATASET if PREFERRED_PPL_DATASET in names else names[0]


def _new_figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _scatter_pareto(
    rows: Sequence[Mapping[str, Any]],
    x_key: str,
    y_key: str,
    *,
    minimize_x: bool,
    minimize_y: bool,
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
) -> Path | None:
    usable = [r for r in rows if _finite(r.get(x_key)) and _finite(r.get(y_key))]
    if not usable:
        log.info("no scheme has both %s and %s; plot %s not written", x_key, y_key, path.name)
        return None
    points = [(float(r[x_key]), float(r[y_key])) for r in usable]
    front = pareto_frontier(points, minimize_x=minimize_x, minimize_y=minimize_y)
    fig = _new_figure()
    ax = fig.add_subplot()
    on_front = set(front)
    for i, (row, (x, y)) in enumerate(zip(usable, points, strict=True)):
        ax.scatter([x], [y], s=50, marker="o" if i in on_front else "x",
                   color="tab:red" if i in on_front else "tab:gray", zorder=3)
        ax.annotate(str(row.get("scheme", i)), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if len(front) > 1:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front],
                color="tab:red", linestyle="--", linewidth=1, label="Pareto frontier")
    elif front:
        ax.scatter([], [], color="tab:red", label="Pareto frontier")
    better = f"better: {'lower' if minimize_x else 'higher'} x, {'lower' if minimize_y else 'higher'} y"
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, title=better, title_fontsize=8)
    return _save(fig, path)


def plot_pareto_ppl_vs_weights(
    rows: Sequence[Mapping[str, Any]], path: Path, *, dataset: str | None = None
) -> Path | None:
    """Plot perplexity against resident weight GiB (both lower is better); None when no data."""
    dataset = dataset or ppl_dataset(rows)
    if dataset is None:
        return None
    return _scatter_pareto(
        rows, "mem.weights_gib", f"ppl.{dataset}", minimize_x=True, minimize_y=True,
        xlabel="resident weights (GiB)", ylabel=f"perplexity ({dataset})",
        title=f"Perplexity vs weight memory ({dataset})", path=Path(path),
    )


def plot_pareto_acc_vs_decode(
    rows: Sequence[Mapping[str, Any]], path: Path, *, batch_size: int = 1
) -> Path | None:
    """Plot mean task accuracy against decode tokens/s (both higher is better); None when no data.

    Speed metrics carry their shape; the axis is the shortest prompt measured at ``batch_size``.
    """
    column = speed_metric_at((k for row in rows for k in row), "speed.decode_tok_s", batch_size)
    if column is None:
        log.info("no decode speed at batch size %d; plot %s not written", batch_size, Path(path).name)
        return None
    shape = column.removeprefix("speed.decode_tok_s.")
    return _scatter_pareto(
        rows, column, "acc_mean", minimize_x=False, minimize_y=False,
        xlabel=f"decode tokens/s ({shape})", ylabel="mean accuracy",
        title="Accuracy vs decode speed", path=Path(path),
    )


def plot_recovery_bars(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Plot per-task accuracy recovery (scheme / baseline, %) as grouped bars; None when no data."""
    tasks = sorted({k.removeprefix("recovery.acc.") for r in rows for k in r if k.startswith("recovery.acc.")})
    schemes = [
        r for r in rows
        if r.get("scheme") != BASELINE_SCHEME and any(_finite(r.get(f"recovery.acc.{t}")) for t in tasks)
    ]
    if not tasks or not schemes:
        log.info("no recovery metrics; plot %s not written", Path(path).name)
        return None
    fig = _new_figure(width=max(6.4, 1.2 * len(tasks) + 2))
    ax = fig.add_subplot()
    width = 0.8 / len(schemes)
    highest = 100.0
    for s, row in enumerate(schemes):
        xs = [t + (s - (len(schemes) - 1) / 2) * width for t in range(len(tasks))]
        values = [100.0 * row[f"recovery.acc.{task}"] if _finite(row.get(f"recovery.acc.{task}")) else 0.0
                  for task in tasks]
        bars = ax.bar(xs, values, width=width, label=str(row.get("scheme", s)))
        # Losses of a few points are the story, and bars from 0 hide them: print the values.
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        highest = max([highest, *values])
    ax.axhline(100.0, color="black", linewidth=1, linestyle="--")
    ax.set_ylim(0, max(110.0, highest + 10))
    ax.set_xticks(range(len(tasks)), tasks, rotation=20)
    ax.set(ylabel="accuracy recovery vs baseline (%)", title="Per-task accuracy recovery")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def write_sweep_plots(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """Write the sweep's PNGs into ``out_dir`` (``<model_dir>/plots/`` for the sweep) and return
    {name: path} of those drawn.

    Names: ``ppl_vs_weights``, ``acc_vs_decode``, ``recovery`` (a plot whose
    metrics no scheme has is skipped).
    """
    out_dir = Path(out_dir)
    drawn = {
        PPL_VS_WEIGHTS: plot_pareto_ppl_vs_weights(rows, out_dir / f"{PPL_VS_WEIGHTS}.png"),
        ACC_VS_DECODE: plot_pareto_acc_vs_decode(rows, out_dir / f"{ACC_VS_DECODE}.png"),
        RECOVERY: plot_recovery_bars(rows, out_dir / f"{RECOVERY}.png"),
    }
    return {name: path for name, path in drawn.items() if path is not None}
