"""Checks of a space's params, each a SpaceError that names the space, the choice and the bad value."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from spaces.errors import SpaceError

__all__ = ["check_fraction", "check_keys", "check_mapping", "check_no_extra", "is_positive_int", "check_bins"]


def check_fraction(space: str, what: str, value: Any, *, low: float = 0.0, high: float = 1.0,
                   high_open: bool = True, low_open: bool = False) -> float:
    """``value`` as a float in [low, high) (or the configured bounds), else a SpaceError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo_b = "(" if low_open else "["
        hi_b = ")" if high_open else "]"
        raise SpaceError(f"{space}: {what} must be a number in {lo_b}{low:g}, {high:g}{hi_b}, got {value!r}")
    return float(value)



def check_keys(space: str, what: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Every key in ``given`` must be one of ``allowed``; the error names the first bad one."""
    allowed = list(allowed)
    allowed_set = set(allowed)
    bad = [k for k in given if k not in allowed_set]
    if bad:
        shown = ", ".join(allowed[:8]) + (" ..." if len(allowed) > 8 else "")
        raise SpaceError(f"{space}: {what} names layer {bad[0]!r}, which is not one this method can "
                         f"handle in this model (eligible: {shown or 'none'})")



def check_mapping(space: str, what: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpaceError(f"{space}: {what} must be an object mapping layer names to values, got {value!r:.200}")
    return value



def check_no_extra(space: str, params: Mapping[str, Any], allowed: Iterable[str]) -> None:
    extra = sorted(set(params) - set(allowed))
    if extra:
        raise SpaceError(f"{space}: unknown params {extra}; expected {sorted(allowed)}")



def is_positive_int(value: Any) -> bool:
    """A plain ``int >= 1`` (``True`` is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1



def check_bins(space: str, bins: Any) -> int | None:
    """``bins`` as None (one value per layer) or a positive int, else a SpaceError."""
    if bins is None:
        return None
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise SpaceError(f"{space}: bins must be a positive integer or null, got {bins!r}")
    return bins
