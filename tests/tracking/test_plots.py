from __future__ import annotations

import json
import re

import pytest

from tracking.plots import format_value, front_figure, plot_front_html, plot_front_png

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
    assert sum(t.startswith("base model\n11M, accuracy 0.960") for t in texts) == 1
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
