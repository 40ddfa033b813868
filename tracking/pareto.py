"""Pareto fronts and hypervolume over a handful of objectives, each maximised or minimised.

Kept apart from Optuna's study so the same code ranks trials read back from MLflow, from a CSV or
from a Ray result grid. Hypervolume is moocore's exact algorithm (public API, any number of
objectives; O(n log n) in 2-D and 3-D).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["to_minimisation", "pareto_mask", "non_dominated_sort", "hypervolume", "dominated_by"]


def _signs(directions: Sequence[str]) -> np.ndarray:
    signs = []
    for d in directions:
        if d in ("maximize", "max"):
            signs.append(-1.0)
        elif d in ("minimize", "min"):
            signs.append(1.0)
        else:
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {d!r}")
    return np.asarray(signs, dtype=float)


def to_minimisation(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Return an ``[n, k]`` float array in which every objective is to be minimised."""
    arr = np.asarray(values, dtype=float).reshape(-1, len(directions))
    return arr * _signs(directions)


def pareto_mask(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows. Rows with a NaN are never on the front; ties both stay."""
    pts = to_minimisation(values, directions)
    n = len(pts)
    finite = np.isfinite(pts).all(axis=1)
    mask = finite.copy()
    for i in range(n):
        if not finite[i]:
            continue
        others = pts[finite]
        dominated = np.any(np.all(others <= pts[i], axis=1) & np.any(others < pts[i], axis=1))
        mask[i] = not dominated
    return mask


def non_dominated_sort(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Front rank of every row (0 = Pareto front); rows with a NaN get rank ``-1``."""
    pts = to_minimisation(values, directions)
    ranks = np.full(len(pts), -1, dtype=int)
    remaining = np.flatnonzero(np.isfinite(pts).all(axis=1))
    rank = 0
    while remaining.size:
        sub = pareto_mask(pts[remaining], ["minimize"] * pts.shape[1])
        ranks[remaining[sub]] = rank
        remaining = remaining[~sub]
        rank += 1
    return ranks


def dominated_by(
    point: Sequence[float], others: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str], *, margin: Sequence[float] | float = 0.0
) -> bool:
    """Whether some row of ``others`` beats ``point`` by at least ``margin`` in every objective.

    The margin makes "clearly dominated" precise for early stopping: a trial half-way through its
    fine-tuning is stopped only when a finished trial is at least as cheap *and* better by the margin.
    """
    if len(others) == 0:
        return False
    p = to_minimisation([point], directions)[0]
    o = to_minimisation(others, directions)
    m = np.broadcast_to(np.asarray(margin, dtype=float), p.shape)
    o = o[np.isfinite(o).all(axis=1)]
    return bool(np.any(np.all(o + m <= p, axis=1) & np.any(o < p, axis=1)))


def hypervolume(
    values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str], reference: Sequence[float]
) -> float:
    """Volume dominated by ``values`` and bounded by ``reference`` (given in the objectives' own sense).

    Points that do not strictly beat the reference in every objective add nothing; rows with a NaN
    are ignored.
    """
    pts = to_minimisation(values, directions)
    ref = to_minimisation([reference], directions)[0]
    pts = pts[np.isfinite(pts).all(axis=1)]
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    import moocore  # here, not at the top: its import takes ~0.2 s

    # All-minimised, strictly inside the box: moocore needs no Pareto filtering (dominated and
    # duplicate points add nothing) and no direction flags.
    return float(moocore.hypervolume(pts, ref=ref))
