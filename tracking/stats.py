"""The statistics a benchmark of compressed models reports: paired differences and rank correlations.

* :func:`paired_differences`: method minus baseline on the *same* split, then mean +- sample std of
  those differences over the splits (a split that is easy for both cancels out; the std of the
  differences, not of either method, is what says whether an edge is real).
* :func:`rank_correlation`: Spearman's rho and Kendall's tau-b (``scipy.stats``) between two
  scores of the same models, e.g. a search trial's short-fine-tune validation OA and the test OA of
  the same plan after the full fine-tune: how well the search's score ranks what it is used to pick.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["paired_differences", "rank_correlation"]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def paired_differences(method: Mapping[Hashable, float | None], baseline: Mapping[Hashable, float | None]
                       ) -> dict[str, Any]:
    """``method[k] - baseline[k]`` for every split ``k`` both measured (finite), and their summary.

    Returns ``{"per_split": {k: diff}, "n", "mean", "std", "wins"}`` (``std``: sample std, 0 for one
    pair; ``mean``/``std`` NaN without pairs; ``wins``: splits where the method is strictly ahead).
    Splits only one side has are left out, never filled in.
    """
    diffs = {k: float(method[k]) - float(baseline[k]) for k in method
             if k in baseline and _finite(method[k]) and _finite(baseline[k])}
    vals = list(diffs.values())
    return {"per_split": diffs, "n": len(vals),
            "mean": statistics.fmean(vals) if vals else math.nan,
            "std": statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else math.nan),
            "wins": sum(v > 0 for v in vals)}


def rank_correlation(x: Sequence[float | None], y: Sequence[float | None]) -> dict[str, Any]:
    """Spearman's rho and Kendall's tau-b of the finite pairs of ``x`` and ``y`` (same order, same models).

    Returns ``{"n", "spearman", "kendall", "spearman_p", "kendall_p"}``; the coefficients are None with
    fewer than 3 pairs or when either side is constant (no ranking to agree with).
    """
    if len(x) != len(y):
        raise ValueError(f"rank_correlation: {len(x)} scores against {len(y)}")
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    out: dict[str, Any] = {"n": len(pairs), "spearman": None, "kendall": None, "spearman_p": None, "kendall_p": None}
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return out
    from scipy.stats import kendalltau, spearmanr

    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    rho, kt = spearmanr(a, b), kendalltau(a, b)
    out.update(spearman=float(rho.statistic), spearman_p=float(rho.pvalue),
               kendall=float(kt.statistic), kendall_p=float(kt.pvalue))
    return out

