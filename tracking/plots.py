"""Accuracy-vs-cost pictures of a search: a static PNG (matplotlib) and an interactive HTML (plotly).

Both take plain records so they work on a live study, on runs read back from MLflow, or on a CSV.
A record is a mapping with ``number`` (trial number), ``values`` (objective name -> value),
``feasible`` (bool), ``pareto`` (bool) and optionally ``method`` and ``label``.

One panel is drawn per cost objective, accuracy on the y axis and the cost on a log x axis (a
compressed model is 4-40x smaller than its base, so a linear axis squeezes the front into a
corner). The y axis is one accuracy for every marker: the quality objective, which in a search is
the *validation* OA (``keys`` maps it to ``val_oa``); the axis is titled with that name. Trials only
have a validation OA, so the base model is drawn at its validation OA too and a final model's ring
sits on its trial's point; the final models' *test* OA appears only in their label text. In each panel:

* the 2-D front of that pair is a staircase; members of the full front are filled blue dots,
  dominated trials hollow grey circles, infeasible trials (over a budget or under the OA floor) red crosses;
* ``budgets`` (objective name -> limit, in the units of the values) draws the limit as a dashed
  red line and shades the side beyond it;
* ``base`` (objective name -> value) is a labelled orange star (its label adds ``test_oa`` when
  ``base`` has one);
* ``final`` (rows with ``trial``, ``method``, ``test_oa`` and the costs) rings the final models
  and labels each with its method and test OA;
* ``uniform`` (a row like a final model's, with its own ``val_oa``) is the uniform baseline fine-tuned
  beside them: a black diamond at its validation OA, labelled with its test OA.

Labels are placed by :func:`place_labels` (pure, in display pixels): each label sits next to its
own point (a leader line, when drawn, ends at that point) and no label covers any marker.

``keys`` maps an objective name to the key ``budgets``, ``base`` and ``final`` use for it when that
differs (``{"accuracy": "val_oa", "latency": "latency_ms"}``); the objective name is tried first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tracking.labels import PendingLabel, Placement, mirror, place_labels, place_panel_labels
from tracking.pareto import pareto_mask

__all__ = ["split_objectives", "plot_front_png", "front_figure", "plot_front_html", "format_value", "place_labels",
           "Placement", "quality_name"]

Objective = tuple[str, str]  # (name, "maximize" | "minimize")

# colours (matplotlib's tab10, so the PNG and the HTML agree)
_FRONT, _DOMINATED, _OVER, _BASE, _FINAL, _BUDGET = "#1f77b4", "#8c8c8c", "#d62728", "#ff7f0e", "#2ca02c", "#d62728"
_UNIFORM = "#222222"


def split_objectives(objectives: Sequence[Objective]) -> tuple[Objective, list[Objective]]:
    """The quality objective (first maximised one) and the cost objectives (all others)."""
    quality = next((o for o in objectives if o[1] == "maximize"), None)
    if quality is None:
        raise ValueError(f"need one maximised objective to plot against, got {list(objectives)!r}")
    return quality, [o for o in objectives if o is not quality]


def _si(v: float, digits: int = 4) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.{digits}g}{suffix}"
    return f"{v:.{digits}g}"


def format_value(v: float, name: str, digits: int = 4) -> str:
    """A cost value for a label or tick: ``2.795M`` params, ``4.2 MB``, ``12.5 ms``, ``4x``."""
    if v is None or not math.isfinite(v):
        return "n/a"
    n = name.lower()
    if "latency" in n or n.endswith("_ms"):
        return f"{v * 1000:.{digits}g} µs" if abs(v) < 1 else f"{v:.{digits}g} ms"
    if "size" in n:
        return f"{_si(v, digits)}B"
    if "rate" in n or "speedup" in n:
        return f"{v:.{digits}g}x"
    return _si(v, digits)


def _get(row: Mapping[str, Any] | None, name: str, keys: Mapping[str, str] | None) -> float:
    """``row[name]``, else ``row[keys[name]]``, as a float (NaN when absent or not a number)."""
    if not row:
        return math.nan
    v = row.get(name)
    if v is None and keys and name in keys:
        v = row.get(keys[name])
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _points(records: Sequence[Mapping[str, Any]], q: str, c: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        v = r.get("values") or {}
        xs.append(_get(v, c, None))
        ys.append(_get(v, q, None))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _staircase(xs: np.ndarray, ys: np.ndarray, c_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Pareto staircase of one (cost, quality) pair, sorted by cost."""
    if len(xs) == 0:
        return xs, ys
    mask = pareto_mask(np.stack([ys, xs], axis=1), ["maximize", c_dir])
    order = np.argsort(xs[mask], kind="stable")
    return xs[mask][order], ys[mask][order]


def _final_points(
    final: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]], q: str, c: str, keys: Mapping[str, str] | None
) -> list[tuple[float, float, Mapping[str, Any]]]:
    """Where each final model sits in the (cost, quality) panel: on its trial's point when the trial
    is among the records (the ring marks the front point it came from), else at the row's own values."""
    by_number = {r.get("number"): r for r in records}
    out = []
    for row in final:
        rec = by_number.get(row.get("trial"))
        x = _get(rec.get("values"), c, None) if rec else math.nan
        y = _get(rec.get("values"), q, None) if rec else math.nan
        if not math.isfinite(x):
            x = _get(row, c, keys)
        if not math.isfinite(y):
            y = _get(row, q, keys)
            if not math.isfinite(y):
                y = _get(row, "search_val_oa", None)
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, y, row))
    return out


def _final_label(row: Mapping[str, Any], sep: str = "\n") -> str:
    trial = f"#{row['trial']}" if row.get("trial") is not None else ""
    head = " ".join(s for s in (trial, str(row.get("method") or "")) if s)
    oa = _get(row, "test_oa", None)
    return head + (f"{sep}test OA {oa:.3f}" if math.isfinite(oa) else "")


def _uniform_label(row: Mapping[str, Any], sep: str = "\n") -> str:
    oa = _get(row, "test_oa", None)
    return f"{row.get('method') or 'uniform'} (baseline)" + (f"{sep}test OA {oa:.3f}" if math.isfinite(oa) else "")


def _cost_text(x: float, c: str, base_x: float, c_dir: str) -> str:
    """``params 2.282M (4.9x smaller)``: the cost, and its ratio to the base model's when known."""
    text = f"{c} {format_value(x, c)}"
    if c_dir == "minimize" and math.isfinite(base_x) and x > 0 and base_x > 0:
        text += f" ({base_x / x:.3g}x smaller)"
    return text


def _use_log(values: Sequence[float]) -> bool:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    return bool(len(arr)) and bool((arr > 0).all())


# ---- which accuracy the y axis shows -------------------------------------------------------------

# the search's quality objective is the trials' validation OA (search.config.QUALITY_OBJECTIVES maps
# "accuracy" to "val_oa"); ``keys`` says so explicitly, this is the default when it does not
_QUALITY_KEYS = {"accuracy": "val_oa"}
_QUALITY_NAMES = {"val_oa": ("validation OA", "val OA"), "search_val_oa": ("validation OA", "val OA"),
                  "test_oa": ("test OA", "test OA"), "cv_oa": ("cross-validated OA", "CV OA")}


def quality_name(q: str, keys: Mapping[str, str] | None = None, short: bool = False) -> str:
    """What the quality objective ``q`` measures, for the y axis title (``"validation OA"``) or, with
    ``short``, for a label (``"val OA"``); the objective's own name when it is not a known accuracy."""
    key = (keys or {}).get(q) or _QUALITY_KEYS.get(q, q)
    names = _QUALITY_NAMES.get(key)
    return names[1 if short else 0] if names else q



def plot_front_png(
    records: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective],
    path: str | Path,
    *,
    base: Mapping[str, float] | None = None,
    title: str = "",
    budgets: Mapping[str, float] | None = None,
    final: Sequence[Mapping[str, Any]] = (),
    keys: Mapping[str, str] | None = None,
    uniform: Mapping[str, Any] | None = None,
) -> Path:
    """Write a PNG with one accuracy-vs-cost panel per cost objective; returns the path.

    ``budgets``: objective name -> limit (same units as the values; an upper limit for a minimised
    cost, a lower one for a maximised one such as a compression rate). ``final``: final-model rows
    with ``trial``, ``method``, ``test_oa`` and the costs keyed by objective name. ``keys``: objective
    name -> the key ``base``/``budgets``/``final`` use instead (see the module docstring).
    """
    fig = front_figure(records, objectives, base=base, title=title, budgets=budgets, final=final, keys=keys,
                       uniform=uniform)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Software": None})  # no version stamp: same input, same bytes
    return path


def front_figure(
    records: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective],
    *,
    base: Mapping[str, float] | None = None,
    title: str = "",
    budgets: Mapping[str, float] | None = None,
    final: Sequence[Mapping[str, Any]] = (),
    keys: Mapping[str, str] | None = None,
    uniform: Mapping[str, Any] | None = None,
) -> Any:
    """The matplotlib ``Figure`` :func:`plot_front_png` saves (built without pyplot: no global state).

    Labels are ``Annotation``s with gids ``final-label``, ``base-label`` and ``trial-label``; each
    one's ``xy`` is its own point and its ``arrow_patch``, when visible, is the leader line to it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (q, _), costs = split_objectives(objectives)
    costs = costs or [("cost", "minimize")]
    budgets = budgets or {}
    n_panels = len(costs)
    # One accuracy on the y axis: the validation OA (the quality objective), for trials, base and
    # final models alike. Trials have nothing else, and mixing them with the final models' test OA
    # (or putting the base at its test OA) on one axis would compare different numbers as if they
    # were one; the final models' test OA - the number to report - is in their labels, named "test OA".
    q_axis, q_short = quality_name(q, keys), quality_name(q, keys, short=True)
    # up to three final models get a labelled box each; more would crowd the panel, so then each
    # ring gets its trial number and the labels go to a list right of the panels
    compact = len(final) > 3
    side = 2.5 if compact else 0.0
    dpi = 120  # the PNG's: labels are placed in these pixels
    fig = Figure(figsize=(7.4 * n_panels + side, 5.6), dpi=dpi)
    FigureCanvasAgg(fig)  # a renderer to measure the labels with
    axes = fig.subplots(1, n_panels, squeeze=False)
    feasible = np.array([bool(r.get("feasible", True)) for r in records], dtype=bool)
    pareto = np.array([bool(r.get("pareto", False)) for r in records], dtype=bool)
    dominated = feasible & ~pareto
    base_y = _get(base, q, keys)
    base_test = _get(base, "test_oa", None)
    handles: dict[str, Any] = {}
    panels: list[tuple[Any, list[tuple[float, float, float]], list[PendingLabel]]] = []

    for ax, (c, c_dir) in zip(axes[0], costs):
        xs, ys = _points(records, q, c)
        base_x = _get(base, c, keys)
        limit = _get(budgets, c, keys)
        finals = _final_points(final, records, q, c, keys)
        uni_x, uni_y = _get(uniform, c, keys), _get(uniform, q, keys)
        shown_x = [*xs[np.isfinite(ys)], base_x, limit, *(x for x, _, _ in finals), uni_x]
        log = _use_log(shown_x)
        if log:
            ax.set_xscale("log")
        minimise = c_dir == "minimize"
        marks: list[tuple[float, float, float]] = []  # (x, y, radius in points) of every marker drawn
        labels: list[PendingLabel] = []

        def scatter(x: Any, y: Any, s: float, lw: float, **kw: Any) -> Any:
            r = math.sqrt(s) / 2 + lw / 2
            marks.extend((float(a), float(b), r) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b))
            return ax.scatter(x, y, s=s, linewidths=lw, **kw)

        if len(xs):
            if dominated.any():
                handles["dominated"] = scatter(xs[dominated], ys[dominated], 22, 0.9, facecolors="none",
                                               edgecolors=_DOMINATED, zorder=2, gid="dominated",
                                               label=f"dominated ({int(dominated.sum())})")
            if (~feasible).any():
                handles["over"] = scatter(xs[~feasible], ys[~feasible], 26, 1.2, c=_OVER, marker="x", zorder=2,
                                          gid="infeasible", label=f"infeasible ({int((~feasible).sum())})")
            sx, sy = _staircase(xs[feasible], ys[feasible], c_dir)
            if len(sx):
                ax.step(sx, sy, where="post" if c_dir == "minimize" else "pre", c=_FRONT, lw=1.3, alpha=0.8, zorder=3)
            if pareto.any():
                handles["pareto"] = scatter(xs[pareto], ys[pareto], 34, 0.6, c=_FRONT, edgecolors="white", zorder=4,
                                            gid="pareto", label=f"Pareto set ({int(pareto.sum())})")
                final_trials = {row.get("trial") for row in final}
                for x, y, r in zip(xs[pareto], ys[pareto], [r for r, p in zip(records, pareto) if p]):
                    if math.isfinite(x) and math.isfinite(y) and r.get("number") not in final_trials:
                        labels.append(PendingLabel((x, y), str(r.get("number", "")), "trial-label",
                                             mirror(("SE", "E", "S", "NE", "SW", "W", "N", "NW"), minimise),
                                             dict(fontsize=6.5, color="0.35"), "0.6"))

        if math.isfinite(limit):
            ax.axvline(limit, color=_BUDGET, ls="--", lw=1.4, zorder=1, gid="budget")
            far = limit * 1e6 if log else limit + 1e12  # shaded to the edge (the x limits are set below)
            beyond = (limit, far) if minimise else (limit / 1e6 if log else limit - 1e12, limit)
            ax.axvspan(*beyond, color=_BUDGET, alpha=0.05, lw=0, zorder=0)
            word = "≤" if c_dir == "minimize" else "≥"
            ax.annotate(f"budget {word} {format_value(limit, c)}", (limit, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(-4 if c_dir == "minimize" else 4, -6), textcoords="offset points",
                        ha="right" if c_dir == "minimize" else "left", va="top", fontsize=8.5, color=_BUDGET,
                        fontweight="bold", gid="budget-label")
            handles["budget"] = Line2D([], [], color=_BUDGET, ls="--", lw=1.4, label="budget")

        if math.isfinite(base_x) and math.isfinite(base_y):
            handles["base"] = scatter([base_x], [base_y], 240, 0.6, marker="*", c=_BASE, edgecolors="black", zorder=6,
                                      gid="base", label="base model")
            text = f"base model\n{format_value(base_x, c)}, {q_short} {base_y:.3f}"
            if math.isfinite(base_test):
                text += f"\ntest OA {base_test:.3f}"
            labels.append(PendingLabel((base_x, base_y), text, "base-label",
                                 mirror(("W", "SW", "NW", "S", "N", "E", "SE", "NE"), minimise),
                                 dict(fontsize=8.5, color="black",
                                      bbox=dict(boxstyle="round,pad=0.25", fc="white", ec=_BASE, alpha=0.9)), _BASE))

        if uniform and math.isfinite(uni_x) and math.isfinite(uni_y):
            handles["uniform"] = scatter([uni_x], [uni_y], 90, 0.8, marker="D", c=_UNIFORM, edgecolors="white",
                                         zorder=6, gid="uniform", label="uniform baseline")
            labels.append(PendingLabel((uni_x, uni_y), _uniform_label(uniform), "uniform-label",
                                       mirror(("SE", "S", "E", "SW", "NE", "N", "W", "NW"), minimise),
                                       dict(fontsize=8, color=_UNIFORM,
                                            bbox=dict(boxstyle="round,pad=0.25", fc="white", ec=_UNIFORM, alpha=0.9)),
                                       _UNIFORM))

        # final models: rings on their points (at the trial's validation OA, like every marker), the
        # label next to each - the empty side of a front is up and towards the cheap end, so try there first
        final_labels = []
        for x, y, row in sorted(finals, key=lambda f: -f[1]):
            handles["final"] = scatter([x], [y], 190, 2.2, facecolors="none", edgecolors=_FINAL, zorder=5,
                                       gid="final", label="final model")
            prefer = mirror(("NW", "W", "N", "SW", "NE", "E", "S", "SE"), minimise)
            if compact:
                final_labels.append(PendingLabel((x, y), f"#{row.get('trial', '?')}", "final-label", prefer,
                                           dict(fontsize=8.5, fontweight="bold", color=_FINAL), _FINAL))
            else:
                final_labels.append(PendingLabel((x, y), _final_label(row) + "\n" + _cost_text(x, c, base_x, c_dir),
                                           "final-label", prefer,
                                           dict(fontsize=8.5, bbox=dict(boxstyle="round,pad=0.3", fc="white",
                                                                        ec=_FINAL, lw=1.2)), _FINAL))
        labels = final_labels + labels  # placed in this order: the big boxes get the best spots

        if log:
            lo_hi = [v for v in shown_x if math.isfinite(v) and v > 0]
            decades = math.log10(max(lo_hi) / min(lo_hi)) if lo_hi else 0.0
            subs = (1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades > 1.2 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos, c=c: format_value(v, c, 3)))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if lo_hi_lim := [v for v in shown_x if math.isfinite(v) and (v > 0 or not log)]:
            lo, hi = min(lo_hi_lim), max(lo_hi_lim)
            if log:
                ax.set_xlim(lo / 1.35, hi * 1.35)
            else:
                pad = 0.06 * (hi - lo or abs(hi) or 1.0)
                ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel(f"{c} (log scale)" if log else c)
        ax.set_ylabel(q_axis)
        ax.grid(alpha=0.3, which="major")
        ax.margins(y=0.08)
        panels.append((ax, marks, labels))

    order = ["pareto", "dominated", "over", "budget", "base", "final", "uniform"]
    legend = [handles[k] for k in order if k in handles]
    if legend:
        ncol = len(legend) if n_panels > 1 else (len(legend) + 1) // 2
        fig.legend(handles=legend, loc="lower center", ncol=ncol, fontsize=8.5, frameon=False)
    right = 1.0
    if compact:
        right = 1 - side / fig.get_figwidth()
        oa = [_get(r, "test_oa", None) for r in final]
        rows = [r for _, _, r in sorted(zip([-v if math.isfinite(v) else math.inf for v in oa], range(len(final)), final))]
        fig.text(right + 0.01, 0.9, "final models\n" + "\n".join(_final_label(r, ": ") for r in rows),
                 ha="left", va="top", fontsize=8.5, linespacing=1.5, gid="final-list",
                 bbox=dict(boxstyle="round,pad=0.4", fc="white", ec=_FINAL, lw=1.2))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, (0.1 if n_panels == 1 else 0.06) if legend else 0, right, 1))
    place_panel_labels(fig, panels)  # last: the layout (and so every marker's pixel) is final now
    return fig


def plot_front_html(
    records: Sequence[Mapping[str, Any]],
    objectives: Sequence[Objective],
    path: str | Path,
    *,
    base: Mapping[str, float] | None = None,
    title: str = "",
    budgets: Mapping[str, float] | None = None,
    final: Sequence[Mapping[str, Any]] = (),
    keys: Mapping[str, str] | None = None,
    include_plotlyjs: bool | str = True,
    uniform: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-contained interactive HTML (hover shows trial, method and plan summary).

    ``budgets``, ``final`` and ``keys`` as in :func:`plot_front_png`. ``include_plotlyjs=True``
    embeds plotly.js (~4.8 MB) so the file opens offline, as MLflow's artifact viewer and
    air-gapped clusters need; pass ``"cdn"`` for a small file.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    (q, _), costs = split_objectives(objectives)
    costs = costs or [("cost", "minimize")]
    path = Path(path)
    budgets = budgets or {}
    # the same single accuracy as the PNG (see front_figure): validation OA on the y axis for every
    # marker, the final models' test OA only in their label text
    q_axis, q_short = quality_name(q, keys), quality_name(q, keys, short=True)
    fig = make_subplots(rows=1, cols=len(costs), subplot_titles=[f"{q_axis} vs {c}" for c, _ in costs])
    feasible = np.array([bool(r.get("feasible", True)) for r in records], dtype=bool)
    pareto = np.array([bool(r.get("pareto", False)) for r in records], dtype=bool)
    hover = ["<br>".join(str(x) for x in (f"trial {r.get('number', '?')}", r.get("method"), r.get("label")) if x)
             for r in records]
    groups = [("dominated", feasible & ~pareto, _DOMINATED, "circle-open"), ("infeasible", ~feasible, _OVER, "x"),
              ("Pareto set", pareto, _FRONT, "circle")]
    base_y = _get(base, q, keys)
    base_test = _get(base, "test_oa", None)
    all_y = [*(_points(records, q, costs[0][0])[1] if records else []), base_y]
    finite_y = [y for y in all_y if math.isfinite(y)]
    for col, (c, c_dir) in enumerate(costs, start=1):
        xs, ys = _points(records, q, c)
        base_x = _get(base, c, keys)
        limit = _get(budgets, c, keys)
        finals = _final_points(final, records, q, c, keys)
        for name, mask, color, symbol in groups:
            if len(xs) and mask.any():
                fig.add_trace(go.Scatter(x=xs[mask], y=ys[mask], mode="markers", name=name, legendgroup=name,
                                         showlegend=col == 1, marker=dict(color=color, symbol=symbol, size=8),
                                         text=[h for h, m in zip(hover, mask) if m], hoverinfo="text+x+y"), row=1, col=col)
        sx, sy = _staircase(xs[feasible], ys[feasible], c_dir) if len(xs) else (xs, ys)
        if len(sx):
            shape = "hv" if c_dir == "minimize" else "vh"
            fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", line=dict(shape=shape, color=_FRONT), name="front",
                                     legendgroup="front", showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
        if math.isfinite(limit) and finite_y:
            lo, hi = min(finite_y), max(finite_y)
            pad = 0.05 * (hi - lo or 1.0)
            word = "≤" if c_dir == "minimize" else "≥"
            fig.add_trace(go.Scatter(x=[limit, limit], y=[lo - pad, hi + pad], mode="lines+text", name="budget",
                                     legendgroup="budget", showlegend=col == 1, line=dict(color=_BUDGET, dash="dash"),
                                     text=["", f"budget {word} {format_value(limit, c)}"], textposition="top left",
                                     textfont=dict(color=_BUDGET), hoverinfo="text",
                                     hovertext=[f"budget {word} {format_value(limit, c)}"] * 2), row=1, col=col)
        if math.isfinite(base_x) and math.isfinite(base_y):
            label = f"base model<br>{format_value(base_x, c)}, {q_short} {base_y:.3f}"
            if math.isfinite(base_test):
                label += f"<br>test OA {base_test:.3f}"
            fig.add_trace(go.Scatter(x=[base_x], y=[base_y], mode="markers+text", name="base model", legendgroup="base",
                                     showlegend=col == 1, marker=dict(symbol="star", size=16, color=_BASE,
                                                                      line=dict(color="black", width=1)),
                                     text=[label], textposition="bottom left" if c_dir == "minimize" else "bottom right",
                                     hoverinfo="text", hovertext=[label]),
                          row=1, col=col)
        if finals:
            labels = [_final_label(row, "<br>") + "<br>" + _cost_text(x, c, base_x, c_dir) for x, _, row in finals]
            fig.add_trace(go.Scatter(x=[f[0] for f in finals], y=[f[1] for f in finals], mode="markers+text",
                                     name="final model", legendgroup="final", showlegend=col == 1,
                                     marker=dict(symbol="circle-open", size=18, color=_FINAL, line=dict(width=3)),
                                     text=labels, textposition="top left" if c_dir == "minimize" else "top right",
                                     textfont=dict(color=_FINAL),
                                     hoverinfo="text", hovertext=labels), row=1, col=col)
        uni_x, uni_y = _get(uniform, c, keys), _get(uniform, q, keys)
        if uniform and math.isfinite(uni_x) and math.isfinite(uni_y):
            label = _uniform_label(uniform, "<br>")
            fig.add_trace(go.Scatter(x=[uni_x], y=[uni_y], mode="markers+text", name="uniform baseline",
                                     legendgroup="uniform", showlegend=col == 1,
                                     marker=dict(symbol="diamond", size=11, color=_UNIFORM),
                                     text=[label], textposition="bottom right" if c_dir == "minimize" else "bottom left",
                                     hoverinfo="text", hovertext=[label]), row=1, col=col)
        shown = [*xs[np.isfinite(ys)], base_x, limit, *(f[0] for f in finals), uni_x]
        log = _use_log(shown)
        fig.update_xaxes(title_text=f"{c} (log scale)" if log else c, type="log" if log else "linear", row=1, col=col)
        fig.update_yaxes(title_text=q_axis, row=1, col=col)
    fig.update_layout(title=title or None, template="plotly_white", height=540, width=640 * len(costs),
                      legend=dict(orientation="h", yanchor="top", y=-0.15, xanchor="center", x=0.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=include_plotlyjs, full_html=True)
    return path
