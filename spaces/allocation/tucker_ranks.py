"""Tucker rank allocation: per-layer Tucker-2/SVD ranks of a :class:`spaces.tucker.TuckerDecomposition`
whose summed layer cost is at most ``keep`` times the original.

**Damage.** The relative spectral energy a rank choice discards from the layer's mode-0 and mode-1
unfoldings (squared singular values beyond the rank over their total; their sum bounds the relative
squared reconstruction error of the Tucker-2 form; one SVD for a linear layer). It is normalised per
layer, so a move's damage is comparable across layers of any size.

**Cost.** Each eligible layer is priced in the form ``transform`` builds at the ranks chosen: Tucker-1
where a mode is at full rank, three convolutions otherwise, the layer itself where the factorised form
would not be smaller. Layers are independent: a move changes its own layer's cost only. The greedy
(:mod:`spaces.allocation.greedy`) moves one mode of one layer at a time; ranks up to full are offered.

Use: ``tucker_allocation(space, model, context, cost=macs_cost, keep=0.5)`` returns an
:class:`~spaces.allocation.greedy.Allocation` (params for ``space.transform``, the ranks it builds, the
predicted cost); :func:`allocate_tucker` returns the params only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from spaces.allocation.greedy import Allocation, checked_keep, solve
from spaces.allocation.layer_costs import CostMemo, LayerCost, LayerSpec, layer_inputs, with_inputs
from spaces.base import Context, Params

__all__ = ["DAMAGES", "tucker_allocation", "allocate_tucker"]


#: Damage measures of :func:`allocate_tucker` (spectral energy discarded by the truncation).
DAMAGES = ("energy",)


def _rank_choices(channels: int, round_to: int, min_fraction: float) -> list[tuple[int, float]]:
    """``(rank, fraction)`` for every rank ``TuckerDecomposition`` builds for ``channels`` from a
    fraction in [min_fraction, 1], highest first; ``rank_of(fraction, channels, round_to) == rank``."""
    from spaces.tucker import rank_of

    lowest = rank_of(min_fraction, channels, round_to)
    found: dict[int, float] = {}
    for r in range(channels, 0, -1):
        v = rank_of(r / channels, channels, round_to)
        if v >= lowest and v not in found:
            nice = round(v / channels, 6)
            found[v] = nice if rank_of(nice, channels, round_to) == v else r / channels
    return sorted(found.items(), reverse=True)


def _discarded(gram: torch.Tensor, ranks: Sequence[int]) -> list[float]:
    """Relative spectral energy beyond each rank, from the Gram matrix of an unfolding."""
    ev = torch.linalg.eigvalsh(gram.double()).flip(0).clamp_min(0)
    total = float(ev.sum())
    if total <= 0:
        return [0.0 for _ in ranks]
    cum = torch.cumsum(ev, 0)
    return [max(0.0, 1.0 - float(cum[r - 1]) / total) for r in ranks]


class _TuckerUnit:
    """One eligible layer: its rank choices per mode, their damage, and its cost in each form."""

    def __init__(self, module: nn.Module, shapes: list[tuple[int, ...]], round_to: int, min_fraction: float,
                 costs: CostMemo) -> None:
        self.module, self.shapes, self.costs = module, shapes, costs
        self.layer = LayerSpec.of(module)
        self.linear = self.layer.kind == "linear"
        w = module.weight.detach().to("cpu", torch.float32)
        if self.linear:
            self.axes = [_rank_choices(min(self.layer.cin, self.layer.cout), round_to, min_fraction)]
            m = w if w.shape[0] <= w.shape[1] else w.t()
            unfoldings = [m]
        else:
            self.axes = [_rank_choices(self.layer.cout, round_to, min_fraction),
                         _rank_choices(self.layer.cin, round_to, min_fraction)]
            unfoldings = [w.reshape(w.shape[0], -1), w.transpose(0, 1).reshape(w.shape[1], -1)]
        self.damage = [_discarded(u @ u.t(), [r for r, _ in axis]) for u, axis in zip(unfoldings, self.axes)]
        self.state: tuple[int, ...] = (0,) * len(self.axes)
        self.base = self._price([self.layer])
        self.memo: dict[tuple[int, ...], tuple[float, float, list[int] | None]] = {}

    def _price(self, chain: list[LayerSpec]) -> float:
        """Summed cost of a chain of layers run one after the other, at each recorded input."""
        total = 0.0
        for shape in self.shapes:
            for layer in chain:
                shape = with_inputs(shape, layer.kind, layer.cin)
                total += self.costs(layer, shape)
                shape = layer.out_shape(shape)
        return total

    def _chain(self, ranks: list[int]) -> list[LayerSpec] | None:
        """The layers ``TuckerDecomposition.transform`` builds at ``ranks`` (Tucker-1 where a mode is
        at full rank), or None where it leaves the layer whole (not worthwhile)."""
        from spaces.tucker import decomposed_form, svd_worthwhile, tucker_worthwhile

        L = self.layer
        if self.linear:
            (r,) = ranks
            if not svd_worthwhile(self.module, r):
                return None
            return [LayerSpec("linear", L.cin, r, False, L.dtype), LayerSpec("linear", r, L.cout, L.bias, L.dtype)]
        r_out, r_in = ranks
        if not tucker_worthwhile(self.module, r_out, r_in, True):
            return None
        form = decomposed_form(self.module, r_out, r_in, True)
        if form == "out":
            return [LayerSpec.conv(L.cin, r_out, L), LayerSpec.conv(r_out, L.cout, L, pointwise=True, bias=L.bias)]
        if form == "in":
            return [LayerSpec.conv(L.cin, r_in, L, pointwise=True), LayerSpec.conv(r_in, L.cout, L, bias=L.bias)]
        return [LayerSpec.conv(L.cin, r_in, L, pointwise=True), LayerSpec.conv(r_in, r_out, L),
                LayerSpec.conv(r_out, L.cout, L, pointwise=True, bias=L.bias)]

    def evaluate(self, state: tuple[int, ...]) -> tuple[float, float, list[int] | None]:
        """(cost, damage, ranks transform builds or None when the layer stays whole) at ``state``."""
        hit = self.memo.get(state)
        if hit is None:
            ranks = [self.axes[a][i][0] for a, i in enumerate(state)]
            chain = self._chain(ranks) if any(state) else None
            if chain is None:
                hit = (self.base, 0.0, None)
            else:
                hit = (self._price(chain), math.fsum(d[i] for d, i in zip(self.damage, state)), ranks)
            self.memo[state] = hit
        return hit

    def fractions(self, state: tuple[int, ...]) -> list[float]:
        return [self.axes[a][i][1] for a, i in enumerate(state)]


class _TuckerProblem:
    """Layers are independent: a move changes its own layer's cost only."""

    def __init__(self, units: list[_TuckerUnit]) -> None:
        self.units = units
        self.size = len(units)

    def floor(self) -> float:
        """The summed cost with every layer in its cheapest corner form (:func:`_corners`)."""
        return math.fsum(min(u.evaluate(s)[0] for s in _corners(u)) for u in self.units)

    def to_floor(self) -> None:
        for u in self.units:
            u.state = min(_corners(u), key=lambda s: u.evaluate(s)[0])

    def state(self, u: int) -> tuple[int, ...]:
        return self.units[u].state

    def lines(self, u: int) -> list[list[tuple[int, ...]]]:
        unit = self.units[u]
        out = []
        for a, axis in enumerate(unit.axes):
            s = unit.state
            out.append([(*s[:a], i, *s[a + 1:]) for i in range(s[a] + 1, len(axis))])
        return out

    def evaluate(self, u: int, state: tuple[int, ...]) -> tuple[float, float]:
        cost, damage, _ = self.units[u].evaluate(state)
        return cost, damage

    def apply(self, u: int, state: tuple[int, ...]) -> list[int]:
        self.units[u].state = state
        return [u]

    def total(self) -> float:
        return math.fsum(unit.evaluate(unit.state)[0] for unit in self.units)


def tucker_allocation(space: Any, model: nn.Module, context: Context, *, cost: LayerCost, keep: float,
                      damage: str = "energy", saturate: bool = False) -> Allocation:
    """Per-layer Tucker-2/SVD ranks whose summed layer ``cost`` is at most ``keep`` times the original.

    Args:
        space: A :class:`spaces.tucker.TuckerDecomposition`; its eligibility (``conv_layers``,
            ``fc_layers``), ``min_fraction`` (the lowest rank offered) and ``round_to`` (ranks are
            multiples of it, as ``transform`` rounds them) are respected. Ranks up to full are
            offered whatever ``max_fraction`` is: a full-rank mode is Tucker-1 (``tucker1: true``).
        model: The model to compress (not mutated); its weights give the spectra.
        context: Image size (the layers' inputs) and classes (the head, never decomposed).
        cost: Prices one layer (:data:`LayerCost`).
        keep: Target summed cost of the eligible layers as a fraction of theirs now, in (0, 1].
        damage: ``"energy"``: the relative spectral energy a rank discards (module docstring).
        saturate: A ``keep`` below the lowest reachable cost gives the lowest ranks instead of
            an error (a strength clipped at its end, as ``scale`` clips).

    Returns:
        The allocation; its params name the decomposed layers only (a layer left whole is not
        named: ``[1.0, 1.0]`` may round below full rank where channels are not multiples of
        ``round_to``). Eligible layers whose padding mode is not ``zeros`` are left whole.

    Raises:
        SpaceError: bad ``keep``/``damage``, a space of another kind, or a target below what the
            lowest ranks reach (the message says the best reachable fraction).
    """
    from spaces.tucker import TuckerDecomposition

    what = "decompose.tucker allocation"
    keep = checked_keep(what, space, TuckerDecomposition, keep, "damage", damage, DAMAGES)
    costs = CostMemo(cost)
    inputs = layer_inputs(model, context)
    names = [n for n in (*space.conv_layers(model, context), *space.fc_layers(model, context))
             if n in inputs and getattr(inputs[n][0], "padding_mode", "zeros") == "zeros"]
    units = [_TuckerUnit(inputs[n][0], inputs[n][1], space.round_to, space.min_fraction, costs) for n in names]
    problem = _TuckerProblem(units)
    base = problem.total()
    solve(problem, what, base, problem.floor(), keep, saturate, f"every eligible layer at its lowest ranks, "
          f"min_fraction={space.min_fraction:g}, round_to={space.round_to}")
    conv: dict[str, list[float]] = {}
    fc: dict[str, float] = {}
    choices: dict[str, list[int]] = {}
    for n, u in zip(names, units):
        ranks = u.evaluate(u.state)[2]
        if ranks is None:
            continue
        choices[n] = ranks
        fractions = u.fractions(u.state)
        if u.linear:
            fc[n] = fractions[0]
        else:
            conv[n] = fractions
    params = {"conv": conv, "fc": fc, "round_to": space.round_to, "tucker1": True}
    return Allocation(params, choices, problem.total(), base)


def _corners(u: _TuckerUnit) -> list[tuple[int, ...]]:
    """Whole, lowest ranks, and (convs) each mode alone at its lowest: the cheapest forms under costs
    that grow with the ranks."""
    last = tuple(len(axis) - 1 for axis in u.axes)
    out = [(0,) * len(last), last]
    if len(last) == 2:
        out += [(last[0], 0), (0, last[1])]
    return out


def allocate_tucker(space: Any, model: nn.Module, context: Context, *, cost: LayerCost, keep: float,
                    damage: str = "energy") -> Params:
    """Params for ``space.transform``: per-layer ranks meeting ``keep`` of the summed layer cost
    (:func:`tucker_allocation`)."""
    return tucker_allocation(space, model, context, cost=cost, keep=keep, damage=damage).params
