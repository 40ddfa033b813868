"""``decompose.allocated``: Tucker-2 / SVD whose per-layer ranks are allocated by a layer cost.

``--methods tucker-alloc`` searches one number, ``keep``: the fraction of the summed layer cost (MACs,
the analytical energy, or a latency table's milliseconds on the target) the decomposed layers may cost;
:func:`spaces.allocation.tucker_allocation` turns it into per-layer ranks, greedily cutting where a unit
of damage (spectral energy discarded) buys the most cost. Scaling, replay and saturation are
:class:`spaces.allocation.space.AllocatedSpace`'s.

Params: ``{"keep": 0.5}``. The record holds the allocated per-layer rank fractions and
:class:`spaces.tucker.TuckerDecomposition`'s record, so a plan replays without the cost.

Options: ``cost`` (``"macs"``, ``"params"``, ``"energy"``, ``"latency"``: ``context.latency_table``
must hold a table, :class:`costs.latency.table.LatencyTable`); ``min_keep`` and ``step``, the sampled
range ``[min_keep, 1 - step]``; the rest goes to the inner :class:`spaces.tucker.TuckerDecomposition`
(``min_fraction``, ``round_to``, ``min_channels``, ``decompose_fc``, ``n_iter_max``).

Use: ``get_space("decompose.allocated", cost="macs").transform(model, {"keep": 0.5}, context)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from spaces.allocation.greedy import Allocation
from spaces.allocation.space import AllocatedSpace
from spaces.allocation.tucker_ranks import tucker_allocation
from spaces.base import Context, Params
from spaces.registry import register_space
from spaces.tucker import TuckerDecomposition

__all__ = ["AllocatedTucker"]


@register_space("decompose.allocated")
class AllocatedTucker(AllocatedSpace):
    """Tucker-2 / SVD with per-layer ranks allocated by a layer cost (module docstring)."""

    aliases = ("tucker-alloc",)
    allocates = TuckerDecomposition

    def __init__(self, *, cost: str = "macs", min_keep: float = 0.05, step: float = 0.05,
                 min_fraction: float = 0.1, round_to: int = 8, min_channels: int = 16,
                 decompose_fc: bool = True, n_iter_max: int = 2) -> None:
        self.inner = TuckerDecomposition(min_fraction=min_fraction, round_to=round_to, min_channels=min_channels,
                                         decompose_fc=decompose_fc, n_iter_max=n_iter_max)
        self._init(cost, min_keep, step)

    def suggest(self, trial: Any, model: nn.Module, context: Context) -> Params:
        return {"keep": self._suggest_keep(trial)}

    def allocation(self, model: nn.Module, params: Params, context: Context) -> Allocation:
        return tucker_allocation(self.inner, model, context, cost=self.layer_cost(context),
                                 keep=max(self._keep(params), 1e-9), saturate=True)
