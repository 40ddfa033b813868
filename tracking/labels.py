"""Label placement for the front plots: every label beside its own point, none covering a marker.

:func:`place_labels` is pure and works in display pixels: for each label it tries the 8 compass
directions at growing distances and takes the first spot that covers no marker, overlaps no label
placed before it and stays inside the axes (preferring spots whose leader line crosses no marker),
else the spot covering the fewest markers. :func:`place_panel_labels` measures matplotlib
annotations with the Agg renderer and moves them where :func:`place_labels` says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["Placement", "place_labels", "PendingLabel", "mirror", "place_panel_labels", "LEADER_MIN"]

_COMPASS = {"E": (1, 0), "NE": (1, 1), "N": (0, 1), "NW": (-1, 1), "W": (-1, 0), "SW": (-1, -1), "S": (0, -1),
            "SE": (1, -1)}
_RADII = (3.0, 12.0, 24.0, 40.0, 60.0, 85.0, 115.0, 150.0, 200.0, 260.0, 330.0)
LEADER_MIN = 6.0  # px: a label whose box is further than this from its marker's edge gets a leader line


@dataclass(frozen=True)
class Placement:
    """Where :func:`place_labels` put one label, in display pixels (y up)."""

    anchor: tuple[float, float]  # the label's own point
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the label's box
    direction: str  # compass direction from the point ("NW", ...)
    radius: float  # gap between the point's marker and the box, px
    leader: bool  # far enough from its point to need a leader line (drawn from the box to the point)
    covered: int  # markers the box covers: 0 unless no clean spot was found
    overlap: float  # px² of the box over other labels or outside the bounds: 0 unless no clean spot

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def clean(self) -> bool:
        return self.covered == 0 and self.overlap == 0


def _hits(marker: tuple[float, float, float], box: Sequence[float], margin: float) -> bool:
    """Whether a round marker (x, y, radius) touches the box grown by ``margin``."""
    x, y, r = marker
    nx, ny = min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])
    return math.hypot(x - nx, y - ny) < r + margin


def _overlap(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0]) + 2 * margin
    h = min(a[3], b[3]) - max(a[1], b[1]) + 2 * margin
    return w * h if w > 0 and h > 0 else 0.0


def _outside(box: Sequence[float], bounds: Sequence[float] | None) -> float:
    if bounds is None:
        return 0.0
    w, h = box[2] - box[0], box[3] - box[1]
    iw = max(0.0, min(box[2], bounds[2]) - max(box[0], bounds[0]))
    ih = max(0.0, min(box[3], bounds[3]) - max(box[1], bounds[1]))
    return w * h - iw * ih


def _seg_dist(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    (px, py), (ax, ay), (bx, by) = p, a, b
    dx, dy = bx - ax, by - ay
    t = ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy) if dx or dy else 0.0
    t = min(max(t, 0.0), 1.0)
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def _seg_hits_box(a: tuple[float, float], b: tuple[float, float], box: Sequence[float]) -> bool:
    """Liang-Barsky: whether segment a-b passes through the box."""
    t0, t1 = 0.0, 1.0
    dx, dy = b[0] - a[0], b[1] - a[1]
    for p, q in ((-dx, a[0] - box[0]), (dx, box[2] - a[0]), (-dy, a[1] - box[1]), (dy, box[3] - a[1])):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return False
    return True


def place_labels(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[tuple[float, float]],
    markers: Sequence[tuple[float, float, float]] = (),
    *,
    bounds: Sequence[float] | None = None,
    taken: Sequence[Sequence[float]] = (),
    prefer: Sequence[Sequence[str]] | None = None,
    radii: Sequence[float] = _RADII,
    margin: float = 2.0,
) -> list[Placement]:
    """Put each label next to its own point without covering a marker or another label.

    Everything is in display pixels (y up). ``anchors[i]`` is label i's point, ``sizes[i]`` its box
    (width, height); ``markers`` are the plotted points as (x, y, radius), the labels' own points
    among them; ``bounds`` (x0, y0, x1, y1) is where boxes must stay (the axes); ``taken`` are boxes
    already there (fixed texts); ``prefer[i]`` orders label i's compass directions (default
    NW, W, N, SW, NE, E, S, SE).

    Labels are placed in order, each at the first candidate - the compass directions in order at
    each of the growing ``radii`` (the gap between the point's marker and the box) - whose box, grown
    by ``margin``, touches no marker, no earlier label and stays inside ``bounds``; among the clean
    candidates one whose leader line (needed beyond 6 px) passes no other marker or label wins over
    the first. With no clean candidate the least bad one is taken (fewest markers covered, then the
    least overlap) and reported in ``covered``/``overlap``. Deterministic: same input, same output.
    """
    marks = [(float(x), float(y), float(r)) for x, y, r in markers]
    boxes = [tuple(float(v) for v in b) for b in taken]
    leaders: list[tuple[tuple[float, float], tuple[float, float]]] = []
    out: list[Placement] = []
    for i, ((x, y), (w, h)) in enumerate(zip(anchors, sizes)):
        x, y, w, h = float(x), float(y), float(w), float(h)
        own = [j for j, m in enumerate(marks) if math.hypot(m[0] - x, m[1] - y) <= 0.5]
        own_r = max((marks[j][2] for j in own), default=0.0)
        others = [m for j, m in enumerate(marks) if j not in own]
        order = list(prefer[i]) if prefer is not None else ["NW", "W", "N", "SW", "NE", "E", "S", "SE"]
        best: tuple | None = None
        k = 0
        for r in radii:
            for d in order:
                dx, dy = _COMPASS[d]
                cx, cy = x + dx * (w / 2 + own_r + r), y + dy * (h / 2 + own_r + r)
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                covered = sum(_hits(m, box, margin) for m in marks)
                overlap = sum(_overlap(box, b, margin) for b in boxes) + _outside(box, bounds)
                leader = r > LEADER_MIN
                crossing = 0
                if leader:  # the line runs from the box centre to the point; outside the box it is seen
                    crossing += sum(_seg_dist(m[:2], (x, y), (cx, cy)) < m[2] + 1.0 for m in others)
                    crossing += sum(_seg_hits_box((x, y), (cx, cy), b) for b in boxes)
                crossing += sum(_seg_hits_box(a, b, box) for a, b in leaders)
                key = (covered > 0 or overlap > 0, covered, overlap, crossing, k)
                if best is None or key < best[0]:
                    best = (key, Placement((x, y), box, d, r, leader, covered, overlap))
                k += 1
            if best is not None and best[0][:4] == (False, 0, 0.0, 0):
                break  # clean, with a clear leader: nothing further out can beat it
        if best is None:  # no radii: put it on the point
            best = ((), Placement((x, y), (x - w / 2, y - h / 2, x + w / 2, y + h / 2), "C", 0.0, False, 1, 0.0))
        placed = best[1]
        out.append(placed)
        boxes.append(placed.box)
        if placed.leader:
            leaders.append(((x, y), placed.center))
    return out



@dataclass
class PendingLabel:
    """A label waiting for :func:`place_labels`: its point (data), text, gid, compass preference,
    text/box style and leader colour."""

    xy: tuple[float, float]
    text: str
    gid: str
    prefer: tuple[str, ...]
    style: dict[str, Any]
    leader: str


def mirror(order: Sequence[str], minimise: bool) -> tuple[str, ...]:
    """``order`` as written for a minimised cost (cheap side left); east and west swapped for a maximised one."""
    swap = str.maketrans("EW", "WE")
    return tuple(order) if minimise else tuple(d.translate(swap) for d in order)


def place_panel_labels(fig: Any, panels: Sequence[tuple[Any, list[tuple[float, float, float]], list[PendingLabel]]]) -> None:
    """Add each panel's labels where :func:`place_labels` puts them (measured with the Agg renderer)."""
    from matplotlib.text import Text

    if not any(labels for _, _, labels in panels):
        return
    px = fig.dpi / 72.0  # pixels per point
    anns = []
    for ax, marks, labels in panels:
        row = []
        for lab in labels:
            own_r = max((r for x, y, r in marks if (x, y) == tuple(lab.xy)), default=0.0)
            ann = ax.annotate(lab.text, lab.xy, xycoords="data", xytext=(0, 0), textcoords="offset points",
                              ha="center", va="center", multialignment="left", zorder=7, gid=lab.gid,
                              arrowprops=dict(arrowstyle="-", color=lab.leader, lw=1.0, shrinkA=0, shrinkB=own_r),
                              **lab.style)
            ann.arrow_patch.set_visible(False)
            row.append(ann)
        anns.append(row)
    fig.canvas.draw()  # lays the texts (and their boxes) out at the offset 0 to measure them
    renderer = fig.canvas.get_renderer()
    for (ax, marks, labels), row in zip(panels, anns):
        if not row:
            continue
        to_px = ax.transData.transform
        markers = [(*to_px((x, y)), r * px) for x, y, r in marks]
        sizes, shift, anchors = [], [], []
        for ann in row:
            patch = ann.get_bbox_patch()
            ext = patch.get_window_extent(renderer) if patch is not None else Text.get_window_extent(ann, renderer)
            lw = patch.get_linewidth() * px if patch is not None else 0.0
            ax_, ay_ = to_px(ann.xy)
            anchors.append((ax_, ay_))
            sizes.append((ext.width + lw, ext.height + lw))
            shift.append(((ext.x0 + ext.x1) / 2 - ax_, (ext.y0 + ext.y1) / 2 - ay_))  # box centre at offset 0
        frame = ax.get_window_extent(renderer)
        taken = [tuple(Text.get_window_extent(t, renderer).extents) for t in ax.texts if t.get_gid() == "budget-label"]
        placed = place_labels(anchors, sizes, markers, bounds=(frame.x0 + 1, frame.y0 + 1, frame.x1 - 1, frame.y1 - 1),
                              taken=taken, prefer=[lab.prefer for lab in labels])
        for ann, p, (ax_, ay_), (sx, sy) in zip(row, placed, anchors, shift):
            cx, cy = p.center
            ann.xyann = ((cx - ax_ - sx) / px, (cy - ay_ - sy) / px)
            ann.arrow_patch.set_visible(p.leader)
