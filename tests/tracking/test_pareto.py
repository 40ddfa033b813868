from __future__ import annotations

import numpy as np
import pytest

from tracking.pareto import dominated_by, hypervolume, non_dominated_sort, pareto_mask

D = ["maximize", "minimize"]  # accuracy up, cost down


def test_pareto_mask_mixed_directions():
    pts = [[0.9, 10], [0.8, 5], [0.85, 12], [0.7, 5], [0.95, 20], [np.nan, 1]]
    assert pareto_mask(pts, D).tolist() == [True, True, False, False, True, False]


def test_ties_both_stay():
    assert pareto_mask([[0.9, 1], [0.9, 1]], D).tolist() == [True, True]


def test_non_dominated_sort_ranks():
    pts = [[0.9, 10], [0.8, 5], [0.85, 12], [0.7, 6], [np.nan, 0]]
    assert non_dominated_sort(pts, D).tolist() == [0, 0, 1, 1, -1]


def test_hypervolume_two_objectives_by_hand():
    # normalised cost in [0, 1], reference (acc 0, cost 1)
    pts = [[0.8, 0.5], [0.6, 0.2]]
    # union of [0,0.8]x[0.5,1] (0.4) and [0,0.6]x[0.2,1] (0.48) minus overlap [0,0.6]x[0.5,1] (0.3)
    assert hypervolume(pts, D, [0.0, 1.0]) == pytest.approx(0.58)
    assert hypervolume(pts + [[0.5, 0.6]], D, [0.0, 1.0]) == pytest.approx(0.58)  # dominated point adds nothing
    assert hypervolume([[0.9, 1.2]], D, [0.0, 1.0]) == 0.0  # outside the reference box
    assert hypervolume([], D, [0.0, 1.0]) == 0.0


def test_hypervolume_three_objectives():
    d3 = ["maximize", "minimize", "minimize"]
    assert hypervolume([[1.0, 0.0, 0.0]], d3, [0.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert hypervolume([[0.5, 0.5, 0.5]], d3, [0.0, 1.0, 1.0]) == pytest.approx(0.125)


def test_hypervolume_three_objectives_overlap_duplicates_and_nan():
    d3 = ["maximize", "minimize", "minimize"]
    ref = [0.0, 1.0, 1.0]
    pts = [[0.9, 0.5, 0.5], [0.5, 0.2, 0.8]]
    # boxes [0,.9]x[.5,1]x[.5,1] and [0,.5]x[.2,1]x[.8,1] overlap in [0,.5]x[.5,1]x[.8,1]
    expect = 0.9 * 0.5 * 0.5 + 0.5 * 0.8 * 0.2 - 0.5 * 0.5 * 0.2
    assert hypervolume(pts, d3, ref) == pytest.approx(expect, rel=1e-12)
    assert hypervolume(pts + pts + [[np.nan, 0.1, 0.1], [0.95, 1.0, 0.1]], d3, ref) == pytest.approx(expect, rel=1e-12)


def _hv_2d_sweep(pts, ref):
    """Exact 2-D hypervolume (all minimised) by a sweep: the reference the moocore result is checked against."""
    pts = sorted(p for p in pts if p[0] < ref[0] and p[1] < ref[1])
    volume, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:
            volume += (ref[0] - x) * (best_y - y)
            best_y = y
    return volume


def test_hypervolume_random_two_objectives_matches_a_sweep():
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.random((int(rng.integers(1, 40)), 2)) * 1.2
        expect = _hv_2d_sweep([(-a, c) for a, c in v], (0.0, 1.0))
        assert hypervolume(v, D, [0.0, 1.0]) == pytest.approx(expect, rel=1e-12, abs=1e-15)


def test_hypervolume_four_objectives():
    d4 = ["maximize", "minimize", "minimize", "minimize"]
    assert hypervolume([[0.5, 0.5, 0.5, 0.5]], d4, [0.0, 1.0, 1.0, 1.0]) == pytest.approx(0.0625)


def test_dominated_by_margin():
    front = [[0.9, 5.0]]
    assert dominated_by([0.7, 6.0], front, D, margin=[0.1, 0.0])
    assert not dominated_by([0.85, 6.0], front, D, margin=[0.1, 0.0])  # within the margin
    assert not dominated_by([0.5, 4.0], front, D, margin=[0.1, 0.0])  # cheaper: not dominated
    assert not dominated_by([0.5, 4.0], [], D)


def test_bad_direction():
    with pytest.raises(ValueError, match="direction"):
        pareto_mask([[1, 2]], ["up", "down"])
