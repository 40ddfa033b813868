from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from tracking.plots import (Placement, format_value, front_figure, place_labels, plot_front_html, plot_front_png,
                            quality_name)

RECORDS = [
    {"number": 0, "values": {"accuracy": 0.9, "params": 5e6, "macs": 4e7}, "feasible": True, "pareto": True, "method": "prune"},
    {"number": 1, "values": {"accuracy": 0.8, "params": 2e6, "macs": 2e7}, "feasible": True, "pareto": True, "method": "tucker"},
    {"number": 2, "values": {"accuracy": 0.7, "params": 3e6, "macs": 3e7}, "feasible": True, "pareto": False},
    {"number": 3, "values": {"accuracy": 0.95, "params": 9e6, "macs": 9e7}, "feasible": False, "pareto": False},
]
OBJ = [("accuracy", "maximize"), ("params", "minimize"), ("macs", "minimize")]
BASE = {"accuracy": 0.96, "params": 11e6, "macs": 1.5e8}
BUDGETS = {"params": 5.5e6, "macs": 6e7}
FINAL = [
    {"trial": 0, "method": "prune", "test_oa": 0.887, "val_oa": 0.9, "params": 5e6, "macs": 4e7, "compression_rate": 2.2},
    {"trial": 1, "method": "tucker", "test_oa": 0.791, "val_oa": 0.8, "params": 2e6, "macs": 2e7, "compression_rate": 5.5},
]


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


def _by_gid(fig, gid):
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def test_png(tmp_path):
    path = plot_front_png(RECORDS, OBJ, tmp_path / "f.png", base=BASE, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_png_with_budget_base_and_final_models(tmp_path):
    path = plot_front_png(RECORDS, OBJ, tmp_path / "f.png", base=BASE, title="t", budgets=BUDGETS, final=FINAL)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = plot_front_png(RECORDS, OBJ, tmp_path / "g.png", base=BASE, title="t", budgets=BUDGETS, final=FINAL)
    assert path.read_bytes() == again.read_bytes()  # deterministic


def test_figure_axes_are_log_and_show_budget_base_and_finals():
    fig = front_figure(RECORDS, OBJ, base=BASE, title="t", budgets=BUDGETS, final=FINAL)
    axes = fig.axes
    assert len(axes) == 2
    assert [ax.get_xscale() for ax in axes] == ["log", "log"]
    assert [ax.get_xlabel() for ax in axes] == ["params (log scale)", "macs (log scale)"]
    # the budget: one vertical line per panel at the limit, labelled with its value
    for ax, limit in zip(axes, (5.5e6, 6e7)):
        (line,) = [a for a in ax.get_children() if a.get_gid() == "budget"]
        assert list(line.get_xdata()) == [limit, limit]
        lo, hi = ax.get_xlim()
        assert lo < limit < hi
    texts = _texts(fig)
    assert "budget ≤ 5.5M" in texts and "budget ≤ 60M" in texts
    # the base model: a labelled star inside the axes
    assert sum(t.startswith("base model\n11M, val OA 0.960") for t in texts) == 1
    assert any(t.startswith("base model\n150M") for t in texts)
    # the final models: each labelled with trial, method and test OA, in every panel
    labels = [a.get_text() for a in _by_gid(fig, "final-label")]
    assert len(labels) == 4
    assert "#0 prune\ntest OA 0.887\nparams 5M (2.2x smaller)" in labels
    assert "#1 tucker\ntest OA 0.791\nmacs 20M (7.5x smaller)" in labels
    # the legend keeps front, dominated and infeasible trials apart
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["Pareto set (2)", "dominated (1)", "infeasible (1)", "budget", "base model", "final model"]


def test_final_model_off_the_records_uses_its_own_values_and_keys():
    obj = [("accuracy", "maximize"), ("latency", "minimize")]
    recs = [{"number": 0, "values": {"accuracy": 0.8, "latency": 3.0}, "feasible": True, "pareto": True}]
    final = [{"trial": 7, "method": "quant", "test_oa": 0.75, "val_oa": 0.77, "latency_ms": 2.0}]
    fig = front_figure(recs, obj, base={"val_oa": 0.9, "latency_ms": 10.0}, budgets={"latency_ms": 4.0}, final=final,
                       keys={"accuracy": "val_oa", "latency": "latency_ms"})
    (ax,) = fig.axes
    (label,) = _by_gid(fig, "final-label")
    assert label.xy == (2.0, 0.77)
    assert label.get_text().startswith("#7 quant\ntest OA 0.750\nlatency 2 ms (5x smaller)")
    assert "budget ≤ 4 ms" in _texts(fig)
    assert ax.get_xscale() == "log"


def test_many_final_models_are_listed_beside_the_panels():
    fig = front_figure(RECORDS, OBJ[:2], final=[{**FINAL[0], "trial": n} for n in range(5)])
    (listing,) = [t for t in fig.texts if t.get_gid() == "final-list"]
    assert listing.get_text().count("test OA 0.887") == 5
    # rings numbered on the trials' points; trial 4 is no record and its row has no accuracy: not drawn
    assert sorted(a.get_text() for a in _by_gid(fig, "final-label")) == ["#0", "#1", "#2", "#3"]


def test_maximised_cost_budget_is_a_lower_limit():
    obj = [("accuracy", "maximize"), ("compression_rate", "maximize")]
    recs = [{"number": 0, "values": {"accuracy": 0.8, "compression_rate": 8.0}, "feasible": True, "pareto": True},
            {"number": 1, "values": {"accuracy": 0.9, "compression_rate": 2.0}, "feasible": False, "pareto": False}]
    fig = front_figure(recs, obj, budgets={"compression_rate": 4.0}, base={"accuracy": 0.95, "compression_rate": 1.0})
    assert "budget ≥ 4x" in _texts(fig)
    assert fig.axes[0].get_xscale() == "log"


def test_non_positive_costs_fall_back_to_a_linear_axis():
    recs = [{"number": 0, "values": {"accuracy": 0.5, "params": 0.0}, "feasible": True, "pareto": True}]
    fig = front_figure(recs, OBJ[:2])
    assert fig.axes[0].get_xscale() == "linear"


@pytest.mark.parametrize(("value", "name", "text"), [
    (2.795e6, "params", "2.795M"), (824_300, "macs", "824.3k"), (4.2e6, "size", "4.2MB"),
    (12.5, "latency", "12.5 ms"), (0.25, "latency_ms", "250 µs"), (4.0, "compression_rate", "4x"),
    (float("nan"), "params", "n/a"),
])
def test_format_value(value, name, text):
    assert format_value(value, name) == text


def test_html_is_self_contained_and_interactive(tmp_path):
    path = plot_front_html(RECORDS, OBJ, tmp_path / "f.html", base=BASE, title="t")
    text = path.read_text()
    assert "Plotly.newPlot" in text and "Pareto set" in text and "trial 1" in text
    assert len(text) > 1_000_000  # plotly.js embedded: opens offline
    small = plot_front_html(RECORDS, OBJ, tmp_path / "g.html", include_plotlyjs="cdn")
    assert small.stat().st_size < 100_000


def test_html_log_axes_budget_base_and_finals(tmp_path):
    path = plot_front_html(RECORDS, OBJ, tmp_path / "f.html", base=BASE, title="t", budgets=BUDGETS, final=FINAL,
                           include_plotlyjs="cdn")
    text = path.read_text()
    spec = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", text, re.S).group(1))
    names = [t.get("name") for t in spec]
    assert {"Pareto set", "dominated", "infeasible", "front", "budget", "base model", "final model"} <= set(names)
    budget = [t for t in spec if t.get("name") == "budget"]
    assert sorted(t["x"][0] for t in budget) == [5.5e6, 6e7]
    finals = [t for t in spec if t.get("name") == "final model"]
    assert "#0 prune<br>test OA 0.887" in finals[0]["text"][0]
    assert text.count('"type":"log"') == 2


def test_empty_records(tmp_path):
    assert plot_front_png([], OBJ[:2], tmp_path / "e.png").exists()
    assert plot_front_html([], OBJ[:2], tmp_path / "e.html").exists()
    assert plot_front_png([], OBJ[:2], tmp_path / "b.png", base=BASE, budgets=BUDGETS, final=FINAL).exists()
    assert plot_front_html([], OBJ[:2], tmp_path / "b.html", base=BASE, budgets=BUDGETS, final=FINAL).exists()


# ---- label placement: every label on its own point, none over a marker --------------------------

def _box_hits_marker(box, marker, margin=0.0):
    x, y, r = marker
    nx, ny = min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])
    return math.hypot(x - nx, y - ny) < r + margin


def _disjoint(a, b):
    return min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])


def test_place_labels_keeps_boxes_off_markers_and_each_other():
    # a tight cluster: six markers within 30 px, three of them labelled with 120x40 boxes
    markers = [(200, 200, 6), (215, 210, 6), (230, 220, 6), (205, 215, 3), (225, 200, 3), (190, 190, 3)]
    anchors = [(200, 200), (215, 210), (230, 220)]
    sizes = [(120, 40)] * 3
    bounds = (0, 0, 600, 500)
    placed = place_labels(anchors, sizes, markers, bounds=bounds)
    assert [p.anchor for p in placed] == anchors  # each placement belongs to its own point
    for p in placed:
        assert p.clean
        assert not any(_box_hits_marker(p.box, m) for m in markers)
        assert bounds[0] <= p.box[0] and p.box[2] <= bounds[2] and bounds[1] <= p.box[1] and p.box[3] <= bounds[3]
        assert p.box[2] - p.box[0] == pytest.approx(120) and p.box[3] - p.box[1] == pytest.approx(40)
    for i, a in enumerate(placed):
        for b in placed[i + 1:]:
            assert _disjoint(a.box, b.box)
    assert place_labels(anchors, sizes, markers, bounds=bounds) == placed  # deterministic


def test_place_labels_prefers_the_first_free_direction_close_to_the_point():
    (p,) = place_labels([(100, 100)], [(40, 10)], [(100, 100, 5)], prefer=[("NE", "SW")])
    assert (p.direction, p.radius, p.leader) == ("NE", 3.0, False)
    assert p.box[0] == pytest.approx(108) and p.box[1] == pytest.approx(108)  # corner just off the marker
    # NE is blocked by a marker: the next direction at the same distance, not NE further out
    (p,) = place_labels([(100, 100)], [(40, 10)], [(100, 100, 5), (130, 113, 3)], prefer=[("NE", "SW")])
    assert p.direction == "SW" and p.radius == 3.0
    # both sides blocked close by: further out, with a leader line back to the point
    walls = [(100, 100, 5), (130, 113, 3), (70, 87, 3)]
    (p,) = place_labels([(100, 100)], [(40, 10)], walls, prefer=[("NE", "SW")])
    assert p.clean and p.leader and p.radius > 3.0
    assert not any(_box_hits_marker(p.box, m) for m in walls)


def test_place_labels_falls_back_to_the_least_bad_spot():
    # the bounds leave no room beside the point: the label goes where it covers no marker and sticks
    # out of the bounds least - the first such spot: closest, in the preferred direction
    (p,) = place_labels([(50, 50)], [(120, 40)], [(50, 50, 5), (20, 20, 3)], bounds=(0, 0, 100, 100))
    assert isinstance(p, Placement) and not p.clean
    assert p.covered == 0 and p.overlap > 0  # covering a marker is worse than leaving the bounds
    assert p.anchor == (50, 50) and p.radius == 3.0
    # every spot covers a marker: the one covering the fewest (west: one, east: two)
    walls = [(50, 50, 5), (70, 50, 2), (75, 52, 2), (30, 50, 2)]
    (p,) = place_labels([(50, 50)], [(20, 10)], walls, prefer=[("E", "W")], radii=(3.0,))
    assert (p.direction, p.covered) == ("W", 1)


def _markers_px(fig):
    """Every scatter marker of the figure as (axes, x, y, radius) in display pixels."""
    out = []
    px = fig.dpi / 72
    for ax in fig.axes:
        for coll in ax.collections:
            offsets = coll.get_offsets()
            if not len(offsets):
                continue
            sizes = np.broadcast_to(coll.get_sizes(), (len(offsets),))
            lw = np.broadcast_to(coll.get_linewidths(), (len(offsets),))
            for (x, y), s, w in zip(ax.transData.transform(offsets), sizes, lw):
                out.append((ax, x, y, (math.sqrt(s) / 2 + w / 2) * px))
    return out


def _label_box(ann, renderer):
    from matplotlib.text import Text
    patch = ann.get_bbox_patch()
    ext = patch.get_window_extent(renderer) if patch is not None else Text.get_window_extent(ann, renderer)
    return ext.extents


CROWDED = [  # three final models close together on a front, trials around them, one in the empty corner
    {"number": 0, "values": {"accuracy": 0.70, "params": 0.9e6}, "feasible": True, "pareto": True},
    {"number": 1, "values": {"accuracy": 0.80, "params": 1.0e6}, "feasible": True, "pareto": True},
    {"number": 2, "values": {"accuracy": 0.82, "params": 1.1e6}, "feasible": True, "pareto": True},
    {"number": 3, "values": {"accuracy": 0.83, "params": 1.2e6}, "feasible": True, "pareto": True},
    {"number": 4, "values": {"accuracy": 0.79, "params": 1.05e6}, "feasible": True, "pareto": False},
    {"number": 5, "values": {"accuracy": 0.80, "params": 1.15e6}, "feasible": True, "pareto": False},
    {"number": 6, "values": {"accuracy": 0.69, "params": 0.95e6}, "feasible": True, "pareto": False},
    {"number": 7, "values": {"accuracy": 0.82, "params": 2.0e6}, "feasible": True, "pareto": False},
    {"number": 8, "values": {"accuracy": 0.30, "params": 1.1e6}, "feasible": False, "pareto": False},
    {"number": 9, "values": {"accuracy": 0.86, "params": 0.7e6}, "feasible": False, "pareto": False},
    {"number": 10, "values": {"accuracy": 0.84, "params": 0.75e6}, "feasible": False, "pareto": False},
]
CROWDED_FINAL = [{"trial": n, "method": "prune+quant", "test_oa": oa, "val_oa": oa, "params": p}
                 for n, oa, p in ((1, 0.71, 1.0e6), (2, 0.84, 1.1e6), (3, 0.93, 1.2e6))]
CROWDED_BASE = {"accuracy": 0.92, "params": 11e6}


@pytest.mark.parametrize("final", [CROWDED_FINAL, CROWDED_FINAL + [{**CROWDED_FINAL[0], "trial": 0}]],
                         ids=["boxed", "compact"])
def test_front_labels_cover_no_marker_and_lead_to_their_own_point(final):
    fig = front_figure(CROWDED, [("accuracy", "maximize"), ("params", "minimize")], base=CROWDED_BASE,
                       budgets={"params": 5e6}, final=final, title="crowded")
    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    markers = _markers_px(fig)
    labels = [a for ax in fig.axes for a in ax.texts if a.get_gid() in ("final-label", "base-label", "trial-label")]
    points = {r["number"]: (r["values"]["params"], r["values"]["accuracy"]) for r in CROWDED}
    boxes = []
    for ann in labels:
        ax = ann.axes
        box = _label_box(ann, renderer)
        boxes.append(box)
        # no label box covers a marker: no trial, base or final-model marker's centre inside it (nor its disc)
        hit = [(x, y) for a, x, y, r in markers if a is ax and _box_hits_marker(box, (x, y, r))]
        assert not hit, f"{ann.get_text()!r} covers markers at {hit}"
        # the label belongs to its own point: the annotation's point is that trial's (or the base's)
        if ann.get_gid() == "base-label":
            own = (CROWDED_BASE["params"], CROWDED_BASE["accuracy"])
        else:
            own = points[int(re.match(r"#?(\d+)", ann.get_text()).group(1))]
        assert tuple(ann.xy) == pytest.approx(own)
        own_px = ax.transData.transform(own)
        # ... and its leader line, when drawn, ends at that point: on its marker's edge, aimed at its centre
        if ann.arrow_patch is not None and ann.arrow_patch.get_visible():
            path = ann.arrow_patch.get_transform().transform_path(ann.arrow_patch.get_path())
            start, end = path.vertices[0], path.vertices[-1]
            own_r = max(r for a, x, y, r in markers if a is ax and math.hypot(x - own_px[0], y - own_px[1]) < 0.5)
            assert math.hypot(*(end - own_px)) <= own_r + 1
            direction = (end - start) / math.hypot(*(end - start))
            off_line = abs(direction[0] * (own_px[1] - start[1]) - direction[1] * (own_px[0] - start[0]))
            assert off_line < 1.0
            # the other end is on the label (matplotlib starts it 2 pt off a text without a box)
            pad = 1 if ann.get_bbox_patch() is not None else 1 + 2 * fig.dpi / 72
            assert box[0] - pad <= start[0] <= box[2] + pad and box[1] - pad <= start[1] <= box[3] + pad
        else:  # no leader: the box is right next to its point
            nx, ny = min(max(own_px[0], box[0]), box[2]), min(max(own_px[1], box[1]), box[3])
            assert math.hypot(nx - own_px[0], ny - own_px[1]) < 30
    # labels do not cover one another
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert _disjoint(a, b)
    gids = [a.get_gid() for a in labels]
    assert gids.count("final-label") == len(final) and gids.count("base-label") == 1
    assert gids.count("trial-label") == (1 if len(final) == 3 else 0)  # trial 0's number, unless it is a final model


def test_the_y_axis_is_validation_oa_for_trials_base_and_final_models():
    # a search's rows: the base and final models have both accuracies, the trials only a validation OA
    base = {"val_oa": 0.96, "test_oa": 0.94, "params": 11e6}
    fig = front_figure(RECORDS, OBJ[:2], base=base, budgets=BUDGETS, final=FINAL,
                       keys={"accuracy": "val_oa", "params": "params"})
    (ax,) = fig.axes
    assert ax.get_ylabel() == "validation OA"
    (star,) = [c for c in ax.collections if c.get_gid() == "base"]
    assert star.get_offsets()[0][1] == pytest.approx(0.96)  # the base's validation OA, not its test OA
    (rings,) = [[c for c in ax.collections if c.get_gid() == "final"]]
    assert sorted(c.get_offsets()[0][1] for c in rings) == pytest.approx([0.8, 0.9])  # the trials' validation OA
    (base_label,) = _by_gid(fig, "base-label")
    assert base_label.get_text() == "base model\n11M, val OA 0.960\ntest OA 0.940"
    finals = sorted(a.get_text() for a in _by_gid(fig, "final-label"))
    assert finals[0].startswith("#0 prune\ntest OA 0.887") and finals[1].startswith("#1 tucker\ntest OA 0.791")


def test_quality_name():
    assert quality_name("accuracy") == "validation OA"  # the search's quality objective
    assert quality_name("accuracy", {"accuracy": "val_oa"}, short=True) == "val OA"
    assert quality_name("accuracy", {"accuracy": "test_oa"}) == "test OA"
    assert quality_name("f1") == "f1"


def test_html_y_axis_is_validation_oa(tmp_path):
    base = {"val_oa": 0.96, "test_oa": 0.94, "params": 11e6, "macs": 1.5e8}
    path = plot_front_html(RECORDS, OBJ, tmp_path / "f.html", base=base, final=FINAL, include_plotlyjs="cdn",
                           keys={"accuracy": "val_oa"})
    text = path.read_text()
    spec = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", text, re.S).group(1))
    (star, _) = [t for t in spec if t.get("name") == "base model"]
    assert star["y"] == [0.96]
    assert star["text"] == ["base model<br>11M, val OA 0.960<br>test OA 0.940"]
    assert len(re.findall(r'"yaxis2?":\{[^{}]*"title":\{"text":"validation OA"\}', text)) == 2
