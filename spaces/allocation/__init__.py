"""Cost-aware per-layer allocation: put compression where it buys the most cost per unit of damage.

The search's global factor (:func:`spaces.project.project_plan`) scales every layer's choice alike. A
uniform cut is rarely the cheapest in accuracy for a given saving: the layers differ in what they cost
(MACs, milliseconds on a target, joules) and in how much they lose. The allocators here choose per-layer
Tucker ranks (:func:`allocate_tucker`) or per-group channel counts (:func:`allocate_channels`) greedily,
taking the move with the least damage per cost saved until the summed layer cost is at most ``keep``
times the original. The result is ordinary params of the space (``space.transform`` builds exactly the
ranks or channel counts chosen), so it can be enqueued in a study, scaled, or shipped in a plan like
any sample.

Modules: :mod:`~spaces.allocation.layer_costs` (what a layer costs: MACs, params, energy, a latency
table), :mod:`~spaces.allocation.greedy` (the solver and :class:`Allocation`),
:mod:`~spaces.allocation.tucker_ranks` and :mod:`~spaces.allocation.channels` (the two problems),
:mod:`~spaces.allocation.damage` (what a channel cut costs in accuracy), :mod:`~spaces.allocation.space`
(the base of the searchable allocated spaces, which is not re-exported here).

Use::

    from spaces.allocation import allocate_channels, get_layer_cost
    params = allocate_channels(space, model, context, cost=get_layer_cost("macs"), keep=0.5)
    pruned = space.apply(model, params, context)   # space: a spaces.prune.ChannelPruning
"""

from __future__ import annotations

from spaces.allocation.channels import allocate_channels, channel_allocation
from spaces.allocation.damage import CHANNEL_DAMAGES, SENSITIVITY_POINTS, channel_sensitivity
from spaces.allocation.greedy import PATIENCE, Allocation
from spaces.allocation.layer_costs import (LAYER_COSTS, LayerCost, energy_cost, get_layer_cost, macs_cost,
                                           params_cost, summed_cost)
from spaces.allocation.tucker_ranks import DAMAGES, allocate_tucker, tucker_allocation

__all__ = [
    "LayerCost", "LAYER_COSTS", "DAMAGES", "CHANNEL_DAMAGES", "SENSITIVITY_POINTS", "PATIENCE", "Allocation",
    "macs_cost", "params_cost", "energy_cost", "get_layer_cost", "summed_cost", "tucker_allocation",
    "allocate_tucker", "channel_allocation", "channel_sensitivity", "allocate_channels",
]
