"""The greedy solver the allocators share: the move with the least damage per cost saved, until the target.

NetAdapt-style (Yang et al. 2018) with a damage proxy instead of a short fine-tune, as HALOC and other
budgeted low-rank allocators do: start from the uncompressed model and repeatedly take the move with the
smallest *damage per cost saved* until the summed layer cost is at most ``keep`` times the original.

**Moves.** A move lowers one mode of one layer (one group) by ``s >= 1`` rank (channel) steps of
the space's rounding, ``s`` chosen to minimise damage per cost saved along that line: the lower
convex hull of (cost saved, damage). With a cost linear in the channel count and damage that
grows with each step (it does: the cheapest channels or singular values go first) that is one
step, as NetAdapt; a factorised layer, though, saves nothing until its rank is well below full
(Tucker-1 at rank ``r`` of a square 3x3 conv costs ``10r/9`` of ``C`` output channels' worth), so
its first move jumps to where the ratio is best. The ratio along a line is unimodal for such costs,
so a line is scanned until it has worsened :data:`PATIENCE` times in a row. A move that would
overshoot the target is replaced by the least damaging move that just reaches it.

Use: an allocator checks its input with :func:`checked_keep`, builds a :class:`Problem` (units with
states, lines of states, each state's cost and damage) and calls :func:`solve`, which moves the problem's
states in place; it reports the result as an :class:`Allocation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from spaces.base import Params
from spaces.checks import check_fraction
from spaces.errors import SpaceError

__all__ = ["PATIENCE", "REL_TOL", "Problem", "Allocation", "checked_keep", "solve"]


#: Scanned states along a line after its best ratio that may fail to improve on it before the
#: scan stops (the ratio is unimodal for affine costs; 2 tolerates a kink of energy or latency).
PATIENCE = 2

REL_TOL = 1e-9  # a summed cost within this relative distance of the target meets it


@dataclass(frozen=True)
class _Move:
    unit: int
    state: tuple[int, ...]
    steps: int
    saved: float
    damage: float  # added damage

    def key(self) -> tuple[float, int, float]:
        return (self.damage / self.saved, self.steps, -self.saved)


class Problem(Protocol):
    """What the greedy needs of an allocation problem: units (layers or groups) with states."""

    size: int

    def state(self, u: int) -> tuple[int, ...]: ...

    def lines(self, u: int) -> list[list[tuple[int, ...]]]: ...

    def evaluate(self, u: int, state: tuple[int, ...]) -> tuple[float, float]: ...

    def apply(self, u: int, state: tuple[int, ...]) -> Iterable[int]: ...

    def total(self) -> float: ...


def _best_move(p: Problem, u: int) -> _Move | None:
    """The move of unit ``u`` with the least damage per cost saved (each line scanned while it may improve)."""
    cur_cost, cur_dmg = p.evaluate(u, p.state(u))
    best: _Move | None = None
    for line in p.lines(u):
        line_best: _Move | None = None
        worse = 0
        for steps, state in enumerate(line, start=1):
            cost, dmg = p.evaluate(u, state)
            saved = cur_cost - cost
            if saved <= 0:
                if line_best is not None:
                    worse += 1
            else:
                move = _Move(u, state, steps, saved, dmg - cur_dmg)
                if line_best is None or move.key() < line_best.key():
                    line_best, worse = move, 0
                else:
                    worse += 1
            if worse > PATIENCE:
                break
        if line_best is not None and (best is None or line_best.key() < best.key()):
            best = line_best
    return best


def _finisher(p: Problem, needed: float) -> _Move | None:
    """The least damaging move of any unit that saves at least ``needed`` (damage grows along a line,
    so each line stops at its first such state, or once it is more damaging than the best found)."""
    best: _Move | None = None
    for u in range(p.size):
        cur_cost, cur_dmg = p.evaluate(u, p.state(u))
        for line in p.lines(u):
            for steps, state in enumerate(line, start=1):
                cost, dmg = p.evaluate(u, state)
                if best is not None and dmg - cur_dmg > best.damage:
                    break
                if cur_cost - cost >= needed:
                    move = _Move(u, state, steps, cur_cost - cost, dmg - cur_dmg)
                    if best is None or (move.damage, move.saved) < (best.damage, best.saved):
                        best = move
                    break
    return best


def _greedy(p: Problem, target: float, what: str, base: float, *, saturate: bool = False) -> None:
    """Apply best moves to ``p`` until its total is at most ``target``; when no move saves any more,
    stop there (``saturate``) or raise a SpaceError."""
    best = {u: _best_move(p, u) for u in range(p.size)}
    total = p.total()
    while total > target * (1 + REL_TOL):
        moves = [m for m in best.values() if m is not None]
        if not moves and saturate:
            return
        if not moves:
            raise SpaceError(f"{what}: no further move saves cost at {total / base:.4g} of the original; "
                             f"the target {target / base:.4g} is not reachable with this cost")
        pick = min(moves, key=_Move.key)
        if pick.saved >= total - target:
            pick = _finisher(p, total - target) or pick
        for u in p.apply(pick.unit, pick.state):
            best[u] = _best_move(p, u)
        total = p.total()


@dataclass(frozen=True)
class Allocation:
    """An allocator's result.

    Attributes:
        params: Params for the space's ``transform``.
        choices: What ``transform`` will build: Tucker ``{layer: [r_out, r_in]}`` (``[r]`` for a
            linear layer), the same as its record's ``ranks``, for the decomposed layers;
            channel pruning ``{group root: kept channels}`` for every group.
        cost: The predicted summed layer cost after compression (Tucker: of the eligible layers;
            channels: of every Conv/Linear layer).
        base_cost: The same sum before compression.
    """

    params: Params
    choices: dict[str, Any]
    cost: float
    base_cost: float

    @property
    def fraction(self) -> float:
        """``cost / base_cost`` (1.0 when there is nothing to cost)."""
        return self.cost / self.base_cost if self.base_cost > 0 else 1.0


def _check_keep(what: str, keep: Any) -> float:
    return check_fraction(what, "keep", keep, low_open=True, high_open=False)


def checked_keep(what: str, space: Any, kind: type, keep: Any, label: str, value: Any,
                 known: Sequence[str]) -> float:
    """``keep`` checked, after the space's kind and the named choice (criterion, damage)."""
    if not isinstance(space, kind):
        raise SpaceError(f"{what}: needs a {kind.__name__} space, got {type(space).__name__}")
    if value not in known:
        raise SpaceError(f"{what}: unknown {label} {value!r}; known: {', '.join(known)}")
    return _check_keep(what, keep)


def solve(p: Any, what: str, base: float, floor: float, keep: float, saturate: bool, how: str) -> None:
    """Greedy down to ``keep * base``; at or below ``floor`` (the least reachable) go straight there
    (``saturate``: the greedy could stop short of it where the cost has kinks) or refuse."""
    target = keep * base
    if saturate and target <= floor * (1 + REL_TOL):
        p.to_floor()
        return
    if floor > target * (1 + REL_TOL):
        raise SpaceError(f"{what}: keep={keep:g} is not reachable: the best reachable is {floor / base:.4g} of "
                         f"the original cost ({how})")
    _greedy(p, target, what, base, saturate=saturate)
