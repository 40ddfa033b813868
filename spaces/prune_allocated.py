"""``prune.allocated``: structured channel pruning whose per-group channel counts are allocated by a layer cost.

``--methods prune-alloc`` searches one number, ``keep``: the fraction of the summed layer cost (MACs, the
analytical energy, or a latency table's milliseconds on the target) the pruned layers may cost;
:func:`spaces.allocation.channel_allocation` turns it into per-group channel counts, greedily cutting
where a unit of damage buys the most cost. ``cost="energy"`` is the energy-aware pruning order of
Yang, Chen & Sze (2017). Scaling, replay and saturation are :class:`spaces.allocation.space.AllocatedSpace`'s.

Params: ``{"criterion": "l1", "round_to": 8, "keep": 0.5}``. The record holds the allocated per-group
ratios and :class:`spaces.prune.ChannelPruning`'s record, so a plan replays without the cost.

Options: ``cost`` (``"macs"``, ``"params"``, ``"energy"``, ``"latency"``: ``context.latency_table``
must hold a table, :class:`costs.latency.table.LatencyTable`); ``damage`` (``"importance"``, the share
of L1 mass removed, or ``"sensitivity"``, each group's measured calibration-loss rise with BatchNorm
re-estimated: :func:`spaces.allocation.channel_sensitivity`); ``min_keep`` and ``step``, the sampled range
``[min_keep, 1 - step]``; the rest goes to the inner :class:`spaces.prune.ChannelPruning` (``criteria``,
``round_to_choices``, ``max_ratio``).

Use: ``get_space("prune.allocated", cost="latency").transform(model, {"keep": 0.5}, context)`` with a
latency table in ``context.latency_table``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from spaces.allocation.channels import channel_allocation
from spaces.allocation.damage import CHANNEL_DAMAGES
from spaces.allocation.greedy import Allocation
from spaces.allocation.space import AllocatedSpace
from spaces.base import Context, Params, Preset
from spaces.errors import SpaceError
from spaces.prune import ChannelPruning
from spaces.registry import register_space

__all__ = ["AllocatedPruning"]


@register_space("prune.allocated")
class AllocatedPruning(AllocatedSpace):
    """Structured channel pruning with per-group counts allocated by a layer cost (module docstring)."""

    aliases = ("prune-alloc",)
    presets = (  # weak: the projection lowers the kept fraction
        Preset(name="l1-params", family="pruning", variant=True, options={"cost": "params", "damage": "importance"},
               what="L1 channels, per-group counts allocated by params: the least L1 mass removed per parameter "
                    "saved (spaces.allocation)",
               start=lambda space, model, context: {"criterion": "l1", "round_to": 8, "keep": 0.95}),
        Preset(name="l1-sensitivity", family="pruning", variant=True,
               options={"cost": "params", "damage": "sensitivity"},
               what="L1 channels, per-group counts allocated by params and each group's measured loss rise "
                    "(pruned alone, BN re-estimated; Li et al. 2017, EagleEye)",
               start=lambda space, model, context: {"criterion": "l1", "round_to": 8, "keep": 0.95}),
    )
    allocates = ChannelPruning
    #: how a cut's damage may be priced (the ``damage`` option)
    damages = CHANNEL_DAMAGES
    _fields = ("criterion", "round_to", "keep")

    def __init__(self, *, cost: str = "macs", min_keep: float = 0.05, step: float = 0.05,
                 criteria: tuple[str, ...] = ("l1",), round_to_choices: tuple[int, ...] = (8,),
                 max_ratio: float = 0.8, damage: str = "importance") -> None:
        self.inner = ChannelPruning(criteria=criteria, round_to_choices=round_to_choices, max_ratio=max_ratio)
        if damage not in CHANNEL_DAMAGES:
            raise SpaceError(f"{self.name}: unknown damage {damage!r}; known: {', '.join(CHANNEL_DAMAGES)}")
        self.damage = damage
        self._init(cost, min_keep, step)

    def suggest(self, trial: Any, model: nn.Module, context: Context) -> Params:
        inner = self.inner
        criterion = (trial.suggest_categorical(self.key("criterion"), list(inner.criteria))
                     if len(inner.criteria) > 1 else inner.criteria[0])
        round_to = (trial.suggest_categorical(self.key("round_to"), list(inner.round_to_choices))
                    if len(inner.round_to_choices) > 1 else inner.round_to_choices[0])
        return {"criterion": criterion, "round_to": round_to, "keep": self._suggest_keep(trial)}

    def trial_params(self, params: Params, model: nn.Module, context: Context) -> dict[str, Any]:
        out = super().trial_params(params, model, context)
        if len(self.inner.criteria) > 1:
            out[self.key("criterion")] = params.get("criterion", "l1")
        if len(self.inner.round_to_choices) > 1:
            out[self.key("round_to")] = params.get("round_to", self.inner.round_to_choices[0])
        return out

    def allocation(self, model: nn.Module, params: Params, context: Context) -> Allocation:
        keep = self._keep(params)
        criterion = params.get("criterion", self.inner.criteria[0])
        return channel_allocation(self.inner, model, context, cost=self.layer_cost(context),
                                  keep=max(keep, 1e-9), criterion=criterion,
                                  round_to=params.get("round_to"), saturate=True, damage=self.damage)
