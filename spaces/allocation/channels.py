"""Channel allocation: per-group channel counts of a :class:`spaces.prune.ChannelPruning` whose summed
layer cost is at most ``keep`` times the original.

A group's channel count sets the output channels of the layers it roots and the input channels of the
layers that consume it (torch-pruning's dependency graph, as ``transform`` prunes); every Conv/Linear
layer is priced, the head and the stem included. Groups share layers (a conv's input and output
channels belong to two groups), so a move changes the savings of the groups beside it, and the greedy
(:mod:`spaces.allocation.greedy`) re-prices them after each move. The damage of a cut is
:mod:`spaces.allocation.damage`'s: the importance share the cut removes, or the measured loss rise.
With ``cost=energy_cost`` this is the energy-aware pruning order of Yang, Chen & Sze (2017).

Use: ``channel_allocation(space, model, context, cost=macs_cost, keep=0.5, damage="importance")``
returns an :class:`~spaces.allocation.greedy.Allocation` (params for ``space.transform``, the kept
channels per group, the predicted cost); :func:`allocate_channels` returns the params only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from spaces.allocation.damage import (CHANNEL_DAMAGES, channel_sensitivity, group_scores, interpolated_damage,
                                      kept_choices)
from spaces.allocation.greedy import REL_TOL, Allocation, checked_keep, solve
from spaces.allocation.layer_costs import CostMemo, LayerCost, LayerSpec, layer_inputs, with_inputs
from spaces.base import Context, Params
from spaces.checks import is_positive_int
from spaces.errors import SpaceError

__all__ = ["channel_allocation", "allocate_channels"]


@dataclass
class _Priced:
    """A Conv/Linear layer of the channel problem and the groups that set its channels."""

    layer: LayerSpec
    shapes: list[tuple[int, ...]]
    outs: list[tuple[int, float]]  # (group, layer channels per root channel of the group)
    ins: list[tuple[int, float]]
    memo: dict[tuple[int, int], float]


class _ChannelProblem:
    """Groups share layers (a conv's input and output channels belong to two groups), so a move
    changes the savings of the groups beside it."""

    def __init__(self, channels: list[int], choices: list[list[tuple[int, float]]], damage: list[list[float]],
                 layers: list[_Priced], costs: CostMemo) -> None:
        self.channels, self.choices, self.damage, self.layers, self.costs = channels, choices, damage, layers, costs
        self.size = len(channels)
        self.idx = [0] * self.size
        self.of_group: list[list[int]] = [[] for _ in channels]
        for i, pl in enumerate(layers):
            for g in {g for g, _ in (*pl.outs, *pl.ins)}:
                self.of_group[g].append(i)
        self.beside = [sorted({h for i in ls for h, _ in (*layers[i].outs, *layers[i].ins)} | {g})
                       for g, ls in enumerate(self.of_group)]
        self.current = [self._cost(i) for i in range(len(layers))]

    def kept(self, g: int, idx: int | None = None) -> int:
        return self.choices[g][self.idx[g] if idx is None else idx][0]

    def dims(self, i: int, override: tuple[int, int] | None = None) -> tuple[int, int]:
        """(in, out) channels of layer ``i`` at the current counts, group ``override[0]`` at index ``override[1]``."""
        pl = self.layers[i]

        def removed(terms: Iterable[tuple[int, float]]) -> int:
            total = 0.0
            for g, mult in terms:
                idx = override[1] if override is not None and override[0] == g else None
                total += (self.channels[g] - self.kept(g, idx)) * mult
            return int(round(total))

        if pl.layer.depthwise:  # in, out and groups move together
            c = pl.layer.cout - removed(dict([*pl.ins, *pl.outs]).items())
            return c, c
        return pl.layer.cin - removed(pl.ins), pl.layer.cout - removed(pl.outs)

    def _cost(self, i: int, override: tuple[int, int] | None = None) -> float:
        pl = self.layers[i]
        cin, cout = self.dims(i, override)
        hit = pl.memo.get((cin, cout))
        if hit is None:
            layer = replace(pl.layer, cin=cin, cout=cout, groups=cin if pl.layer.depthwise else pl.layer.groups)
            hit = math.fsum(self.costs(layer, with_inputs(s, layer.kind, cin)) for s in pl.shapes)
            pl.memo[(cin, cout)] = hit
        return hit

    def state(self, g: int) -> tuple[int, ...]:
        return (self.idx[g],)

    def lines(self, g: int) -> list[list[tuple[int, ...]]]:
        return [[(i,) for i in range(self.idx[g] + 1, len(self.choices[g]))]]

    def evaluate(self, g: int, state: tuple[int, ...]) -> tuple[float, float]:
        over = (g, state[0])
        return math.fsum(self._cost(i, over) for i in self.of_group[g]), self.damage[g][state[0]]

    def apply(self, g: int, state: tuple[int, ...]) -> list[int]:
        self.idx[g] = state[0]
        for i in self.of_group[g]:
            self.current[i] = self._cost(i)
        return self.beside[g]

    def total(self) -> float:
        return math.fsum(self.current)

    def floor(self) -> float:
        """The summed cost with every group at its fewest channels (the least reachable for costs
        that grow with the channels)."""
        idx, self.idx = self.idx, [len(c) - 1 for c in self.choices]
        try:
            return math.fsum(self._cost(i) for i in range(len(self.layers)))
        finally:
            self.idx = idx

    def to_floor(self) -> None:
        """Every group at its fewest channels (what :meth:`floor` prices)."""
        self.idx = [len(c) - 1 for c in self.choices]
        self.current = [self._cost(i) for i in range(len(self.layers))]


def channel_allocation(space: Any, model: nn.Module, context: Context, *, cost: LayerCost, keep: float,
                       criterion: str = "l1", round_to: int | None = None, saturate: bool = False,
                       damage: str = "importance") -> Allocation:
    """Per-group channel counts whose pruned model's summed layer ``cost`` is at most ``keep`` times
    the original (every Conv/Linear layer counted, the head and the stem included).

    Args:
        space: A :class:`spaces.prune.ChannelPruning`; ratios stay within its ``max_ratio``.
        model: The model to prune (not mutated).
        context: Image size, classes (the head keeps its outputs) and, for ``taylor``, calibration.
        cost: Prices one layer (:data:`LayerCost`); ``energy_cost`` gives energy-aware pruning.
        keep: Target summed cost as a fraction of the original, in (0, 1].
        criterion: Channel importance, one of ``spaces.prune.CRITERIA`` (written into the params).
        round_to: Kept channels are multiples of it (at least one multiple); default the space's
            first ``round_to_choices``.
        saturate: A ``keep`` below the lowest reachable cost gives every group at ``max_ratio``
            instead of an error.
        damage: ``"importance"`` (the share of the group's importance removed) or
            ``"sensitivity"`` (the measured calibration-loss rise, :func:`channel_sensitivity`;
            needs calibration batches in the context).

    A group's channel count sets the output channels of the layers it roots and the input channels
    of the layers that consume it (torch-pruning's dependency graph, as ``transform`` prunes);
    groups that reach a grouped (not depthwise) convolution are left whole.

    Raises:
        SpaceError: bad ``keep``/``criterion``/``round_to``/``damage``, a space of another kind, a
            sensitivity without calibration batches, or a target below what ``max_ratio``
            everywhere reaches (the message says the best reachable fraction).
    """
    from spaces.prune import CRITERIA, ChannelPruning

    what = "prune.channel allocation"
    keep = checked_keep(what, space, ChannelPruning, keep, "criterion", criterion, CRITERIA)
    if damage not in CHANNEL_DAMAGES:
        raise SpaceError(f"{what}: unknown damage {damage!r}; known: {', '.join(CHANNEL_DAMAGES)}")
    if round_to is None:
        round_to = space.round_to_choices[0]
    if not is_positive_int(round_to):
        raise SpaceError(f"{what}: round_to must be a positive integer, got {round_to!r}")
    costs = CostMemo(cost)
    inputs = layer_inputs(model, context)
    dg, groups, scores, names = group_scores(model, context, criterion)
    index = {n: i for i, n in enumerate(inputs)}
    layers = [_Priced(LayerSpec.of(m), shapes, [], [], {}) for m, shapes in inputs.values()]
    channels, choices, damages = [], [], []
    for g, ((_root, group), imp) in enumerate(zip(groups, scores)):
        c = len(group[0].idxs)
        seen: set[tuple[int, str]] = set()
        grouped = False
        for item in group:
            dep = item.dep
            i = index.get(names.get(dep.target.module, ""))
            side = ("out" if dg.is_out_channel_pruning_fn(dep.handler)
                    else "in" if dg.is_in_channel_pruning_fn(dep.handler) else None)
            if i is None or side is None or (i, side) in seen:
                continue
            seen.add((i, side))
            pl = layers[i]
            grouped |= pl.layer.kind == "conv" and pl.layer.groups > 1 and not pl.layer.depthwise
            (pl.outs if side == "out" else pl.ins).append((g, len(item.idxs) / c))
        options = [(c, 0.0)] if grouped else kept_choices(c, round_to, space.max_ratio)
        order = torch.sort(imp).values
        total = float(order.sum())
        cum = torch.cumsum(order, 0)
        channels.append(c)
        choices.append(options)
        damages.append([float(cum[c - k - 1]) / total if k < c and total > 0 else 0.0 for k, _ in options])
    problem = _ChannelProblem(channels, choices, damages, layers, costs)
    base, floor = problem.total(), problem.floor()
    if damage == "sensitivity" and not (saturate and keep * base <= floor * (1 + REL_TOL)):
        # measured only when the greedy runs (the strongest setting is every group at its floor)
        measured = channel_sensitivity(space, model, context, criterion=criterion, round_to=round_to)
        for g, (name, _) in enumerate(groups):
            if len(choices[g]) > 1:  # the importance share (<= 1) only breaks ties where the loss did not rise
                rises = interpolated_damage(choices[g], measured.get(name, []))
                damages[g] = [r + 1e-6 * sh for r, sh in zip(rises, damages[g])]
    solve(problem, what, base, floor, keep, saturate,
          f"every group at max_ratio={space.max_ratio:g}, round_to={round_to}")
    ratios = {name: choices[g][problem.idx[g]][1] for g, (name, _) in enumerate(groups)}
    kept = {name: problem.kept(g) for g, (name, _) in enumerate(groups)}
    params = {"criterion": criterion, "round_to": round_to, "ratios": ratios}
    return Allocation(params, kept, problem.total(), base)


def allocate_channels(space: Any, model: nn.Module, context: Context, *, cost: LayerCost, keep: float,
                      criterion: str = "l1", round_to: int | None = None, damage: str = "importance") -> Params:
    """Params for ``space.transform``: per-group pruning ratios meeting ``keep`` of the summed layer
    cost (:func:`channel_allocation`)."""
    return channel_allocation(space, model, context, cost=cost, keep=keep, criterion=criterion,
                              round_to=round_to, damage=damage).params
