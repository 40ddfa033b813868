"""Accuracy-vs-cost pictures of a search: a static PNG (matplotlib) and an interactive HTML (plotly).

Both take plain records so they work on a live study, on runs read back from MLflow, or on a CSV.
A record is a mapping with ``number`` (trial number), ``values`` (objective name -> value),
``feasible`` (bool), ``pareto`` (bool) and optionally ``method`` and ``label``. One panel is drawn
per cost objective, accuracy on the y axis; the 2-D front of that pair is drawn as a staircase,
the members of the full front are highlighted, the base model is a star.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tracking.pareto import pareto_mask

__all__ = ["split_objectives", "plot_front_png", "plot_front_html"]

Objective = tuple[str, str]  # (name, "maximize" | "minimize")


def split_objectives(objectives: Sequence[Objective]) -> tuple[Objective, list[Objective]]:
    """The quality objective (first maximised one) and the cost objectives (all others)."""
    quality = next((o for o in objectives if o[1] == "maximize"), None)
    if quality is None:
        raise ValueError(f"need one maximised objective to plot against, got {list(objectives)!r}")
    return quality, [o for o in objectives if o is not quality]


def _points(records: Sequence[Mapping[str, Any]], q: str, c: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        v = r.get("values") or {}
        xs.append(float(v.get(c, np.nan)))
        ys.append(float(v.get(q, np.nan)))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _staircase(xs: np.ndarray, ys: np.ndarray, c_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Pareto staircase of one (cost, quality) pair, sorted by cost."""
    if len(xs) == 0:
        return xs, ys
    mask = pareto_mask(np.stack([ys, xs], axis=1), ["maximize", c_dir])
    order = np.argsort(xs[mask])
    return xs[mask][order], ys[mask][order]


def plot_front_png(
    records: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective],
    path: str | Path,
    *,
    base: Mapping[str, float] | None = None,
    title: str = "",
) -> Path:
    """Write a PNG with one accuracy-vs-cost panel per cost objective; returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    (q, _), costs = split_objectives(objectives)
    path = Path(path)
    fig, axes = plt.subplots(1, max(1, len(costs)), figsize=(5.5 * max(1, len(costs)), 4.2), squeeze=False)
    feasible = np.array([bool(r.get("feasible", True)) for r in records], dtype=bool)
    pareto = np.array([bool(r.get("pareto", False)) for r in records], dtype=bool)
    for ax, (c, c_dir) in zip(axes[0], costs):
        xs, ys = _points(records, q, c)
        if len(xs):
            ax.scatter(xs[feasible & ~pareto], ys[feasible & ~pareto], s=18, c="0.6", label="trial")
            ax.scatter(xs[~feasible], ys[~feasible], s=22, c="tab:red", marker="x", label="over budget")
            ax.scatter(xs[pareto], ys[pareto], s=36, c="tab:blue", label="Pareto set", zorder=3)
            sx, sy = _staircase(xs[feasible], ys[feasible], c_dir)
            if len(sx):
                ax.step(sx, sy, where="post", c="tab:blue", lw=1.2)
            for x, y, r in zip(xs[pareto], ys[pareto], [r for r, p in zip(records, pareto) if p]):
                ax.annotate(str(r.get("number", "")), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if base and c in base and q in base:
            ax.scatter([base[c]], [base[q]], marker="*", s=160, c="tab:orange", label="base model", zorder=4)
        finite = xs[np.isfinite(xs) & (xs > 0)] if len(xs) else xs
        if len(finite) and finite.max() / max(finite.min(), 1e-12) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(c)
        ax.set_ylabel(q)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_front_html(
    records: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective],
    path: str | Path,
    *,
    base: Mapping[str, float] | None = None,
    title: str = "",
    include_plotlyjs: bool | str = True,
) -> Path:
    """Write a self-contained interactive HTML (hover shows trial, method and plan summary).

    ``include_plotlyjs=True`` embeds plotly.js (~4.8 MB) so the file opens offline, as MLflow's
    artifact viewer and air-gapped clusters need; pass ``"cdn"`` for a small file.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    (q, _), costs = split_objectives(objectives)
    path = Path(path)
    fig = make_subplots(rows=1, cols=max(1, len(costs)), subplot_titles=[f"{q} vs {c}" for c, _ in costs])
    feasible = np.array([bool(r.get("feasible", True)) for r in records], dtype=bool)
    pareto = np.array([bool(r.get("pareto", False)) for r in records], dtype=bool)
    hover = ["<br>".join(str(x) for x in (f"trial {r.get('number', '?')}", r.get("method"), r.get("label")) if x)
             for r in records]
    groups = [("trial", feasible & ~pareto, "#999999", "circle"), ("over budget", ~feasible, "#d62728", "x"),
              ("Pareto set", pareto, "#1f77b4", "circle")]
    for col, (c, c_dir) in enumerate(costs, start=1):
        xs, ys = _points(records, q, c)
        for name, mask, color, symbol in groups:
            if len(xs) and mask.any():
                fig.add_trace(go.Scatter(x=xs[mask], y=ys[mask], mode="markers", name=name, legendgroup=name,
                                         showlegend=col == 1, marker=dict(color=color, symbol=symbol, size=8),
                                         text=[h for h, m in zip(hover, mask) if m], hoverinfo="text+x+y"), row=1, col=col)
        sx, sy = _staircase(xs[feasible], ys[feasible], c_dir) if len(xs) else (xs, ys)
        if len(sx):
            fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", line=dict(shape="hv", color="#1f77b4"), name="front",
                                     legendgroup="front", showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
        if base and c in base and q in base:
            fig.add_trace(go.Scatter(x=[base[c]], y=[base[q]], mode="markers", name="base model", legendgroup="base",
                                     showlegend=col == 1, marker=dict(symbol="star", size=14, color="#ff7f0e")), row=1, col=col)
        fig.update_xaxes(title_text=c, row=1, col=col)
        fig.update_yaxes(title_text=q, row=1, col=col)
    fig.update_layout(title=title or None, template="plotly_white", height=480, width=520 * max(1, len(costs)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=include_plotlyjs, full_html=True)
    return path
