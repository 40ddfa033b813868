from __future__ import annotations

from tracking.plots import plot_front_html, plot_front_png

RECORDS = [
    {"number": 0, "values": {"accuracy": 0.9, "params": 5e6, "macs": 4e7}, "feasible": True, "pareto": True, "method": "prune"},
    {"number": 1, "values": {"accuracy": 0.8, "params": 2e6, "macs": 2e7}, "feasible": True, "pareto": True, "method": "tucker"},
    {"number": 2, "values": {"accuracy": 0.7, "params": 3e6, "macs": 3e7}, "feasible": True, "pareto": False},
    {"number": 3, "values": {"accuracy": 0.95, "params": 9e6, "macs": 9e7}, "feasible": False, "pareto": False},
]
OBJ = [("accuracy", "maximize"), ("params", "minimize"), ("macs", "minimize")]
BASE = {"accuracy": 0.96, "params": 11e6, "macs": 1.5e8}


def test_png(tmp_path):
    path = plot_front_png(RECORDS, OBJ, tmp_path / "f.png", base=BASE, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_html_is_self_contained_and_interactive(tmp_path):
    path = plot_front_html(RECORDS, OBJ, tmp_path / "f.html", base=BASE, title="t")
    text = path.read_text()
    assert "Plotly.newPlot" in text and "Pareto set" in text and "trial 1" in text
    assert len(text) > 1_000_000  # plotly.js embedded: opens offline
    small = plot_front_html(RECORDS, OBJ, tmp_path / "g.html", include_plotlyjs="cdn")
    assert small.stat().st_size < 100_000


def test_empty_records(tmp_path):
    assert plot_front_png([], OBJ[:2], tmp_path / "e.png").exists()
    assert plot_front_html([], OBJ[:2], tmp_path / "e.html").exists()
