"""Channel pruning and Tucker-2 whose per-layer choices are allocated by a layer cost.

``prune.allocated`` (``--methods prune-alloc``) and ``decompose.allocated`` (``tucker-alloc``)
search one number per method, ``keep``: the fraction of the summed layer cost (MACs, the
analytical energy, or a latency table's milliseconds on the target) the compressed layers may
cost. :mod:`spaces.allocate` turns it into per-group channel counts or per-layer ranks,
greedily cutting where a unit of damage buys the most cost (AMC / NetAdapt / HALOC style);
``cost="energy"`` is the energy-aware pruning order of Yang, Chen & Sze (2017). The search's
projection scales ``keep`` (``scale``), so a trial lands on its budget with an allocation made
for it, not with a sampled shape stretched onto it.

Params: ``{"criterion": "l1", "round_to": 8, "keep": 0.5}`` (pruning) or ``{"keep": 0.5}``
(Tucker). The record holds the allocated per-layer params and the inner space's record, so a
plan replays without the cost (no latency table needed to rebuild it). A ``keep`` below what the
space can reach gives its strongest allocation (as ``scale`` saturates elsewhere).

Options: ``cost`` (``"macs"``, ``"params"``, ``"energy"``, ``"latency"``: ``context.latency_table``
must hold a table, :class:`costs.latency.table.LatencyTable`); pruning's ``damage`` (``"importance"``,
the share of L1 mass removed, or ``"sensitivity"``, each group's measured calibration-loss rise with
BatchNorm re-estimated: :func:`spaces.allocate.channel_sensitivity`); ``min_keep`` and ``step``, the sampled range
``[min_keep, 1 - step]``; the rest goes to the inner :class:`spaces.prune.ChannelPruning`
(``criteria``, ``round_to_choices``, ``max_ratio``) or :class:`spaces.tucker.TuckerDecomposition`
(``min_fraction``, ``round_to``, ``min_channels``, ``decompose_fc``, ``n_iter_max``).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from torch import nn

from spaces import allocate
from spaces.checks import check_fraction, check_no_extra
from spaces.base import Context, Params, Record, Space, Transformed
from spaces.errors import SpaceError
from spaces.prune import ChannelPruning
from spaces.registry import register_space
from spaces.tucker import TuckerDecomposition

__all__ = ["AllocatedPruning", "AllocatedTucker"]


class _Allocated(Space):
    """What both allocated spaces share: the cost, the sampled ``keep``, its scaling and replay."""

    inner: Space
    _fields: tuple[str, ...] = ("keep",)

    def _init(self, cost: str, min_keep: float, step: float) -> None:
        if cost not in allocate.LAYER_COSTS:
            raise SpaceError(f"{self.name}: unknown cost {cost!r}; known: {', '.join(allocate.LAYER_COSTS)}")
        self.cost = cost
        self.step = check_fraction(self.name, "step", step, low_open=True)
        self.min_keep = check_fraction(self.name, "min_keep", min_keep, low_open=True, high=1 - self.step,
                                       high_open=False)

    def layer_cost(self, context: Context) -> allocate.LayerCost:
        """The layer cost this space allocates by (the context's latency table for ``latency``)."""
        try:
            return allocate.get_layer_cost(self.cost, table=context.latency_table)
        except SpaceError as exc:
            raise self.fail(str(exc)) from None

    def _keep(self, params: Params) -> float:
        check_no_extra(self.name, params, self._fields)
        if "keep" not in params:
            raise self.fail("params need 'keep', the fraction of the summed layer cost to keep")
        return check_fraction(self.name, "keep", params["keep"], high_open=False)

    def _suggest_keep(self, trial: Any) -> float:
        return trial.suggest_float(self.key("keep"), self.min_keep, 1 - self.step, step=self.step)

    def scale(self, params: Params, factor: float) -> Params:
        """Stronger is less kept: ``1 - (1 - keep) * factor``, clipped to [0, 1] (0 = the strongest)."""
        super().scale(params, factor)
        out = copy.deepcopy(dict(params))
        if factor != 1:
            out["keep"] = round(min(1.0, max(0.0, 1 - (1 - float(params["keep"])) * factor)), 6)
        return out

    def trial_params(self, params: Params, model: nn.Module, context: Context) -> dict[str, Any]:
        return {self.key("keep"): self._keep(params)}

    def allocation(self, model: nn.Module, params: Params, context: Context) -> allocate.Allocation:
        """The inner space's per-layer params for ``params`` (the greedy of :mod:`spaces.allocate`)."""
        raise NotImplementedError

    def transform(self, model: nn.Module, params: Params, context: Context, *,
                  record: Record | None = None, structure_only: bool = False) -> Transformed:
        self._keep(params)
        if record is not None:
            if not isinstance(record, Mapping) or not isinstance(record.get("params"), Mapping):
                raise self.fail("the plan's record has no allocated params to replay")
            return Transformed(self.inner.transform(model, record["params"], context, record=record.get("inner"),
                                                    structure_only=structure_only).model, dict(record))
        al = self.allocation(model, params, context)
        done = self.inner.transform(model, al.params, context, structure_only=structure_only)
        return Transformed(done.model, {"params": al.params, "inner": done.record, "cost": self.cost,
                                        "predicted_fraction": round(al.fraction, 6), "choices": al.choices})


@register_space("prune.allocated")
class AllocatedPruning(_Allocated):
    """Structured channel pruning with per-group counts allocated by a layer cost (module docstring)."""

    aliases = ("prune-alloc",)
    _fields = ("criterion", "round_to", "keep")

    def __init__(self, *, cost: str = "macs", min_keep: float = 0.05, step: float = 0.05,
                 criteria: tuple[str, ...] = ("l1",), round_to_choices: tuple[int, ...] = (8,),
                 max_ratio: float = 0.8, damage: str = "importance") -> None:
        self.inner = ChannelPruning(criteria=criteria, round_to_choices=round_to_choices, max_ratio=max_ratio)
        if damage not in allocate.CHANNEL_DAMAGES:
            raise SpaceError(f"{self.name}: unknown damage {damage!r}; known: {', '.join(allocate.CHANNEL_DAMAGES)}")
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

    def allocation(self, model: nn.Module, params: Params, context: Context) -> allocate.Allocation:
        keep = self._keep(params)
        criterion = params.get("criterion", self.inner.criteria[0])
        return allocate.channel_allocation(self.inner, model, context, cost=self.layer_cost(context),
                                           keep=max(keep, 1e-9), criterion=criterion,
                                           round_to=params.get("round_to"), saturate=True, damage=self.damage)


@register_space("decompose.allocated")
class AllocatedTucker(_Allocated):
    """Tucker-2 / SVD with per-layer ranks allocated by a layer cost (module docstring)."""

    aliases = ("tucker-alloc",)

    def __init__(self, *, cost: str = "macs", min_keep: float = 0.05, step: float = 0.05,
                 min_fraction: float = 0.1, round_to: int = 8, min_channels: int = 16,
                 decompose_fc: bool = True, n_iter_max: int = 2) -> None:
        self.inner = TuckerDecomposition(min_fraction=min_fraction, round_to=round_to, min_channels=min_channels,
                                         decompose_fc=decompose_fc, n_iter_max=n_iter_max)
        self._init(cost, min_keep, step)

    def suggest(self, trial: Any, model: nn.Module, context: Context) -> Params:
        return {"keep": self._suggest_keep(trial)}

    def allocation(self, model: nn.Module, params: Params, context: Context) -> allocate.Allocation:
        return allocate.tucker_allocation(self.inner, model, context, cost=self.layer_cost(context),
                                          keep=max(self._keep(params), 1e-9), saturate=True)
