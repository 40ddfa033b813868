"""The base of the searchable allocated spaces: one searched ``keep``, per-layer choices allocated by a layer cost.

``prune.allocated`` (:mod:`spaces.prune_allocated`) and ``decompose.allocated``
(:mod:`spaces.tucker_allocated`) search one number per method, ``keep``: the fraction of the summed layer
cost (MACs, the analytical energy, or a latency table's milliseconds on the target) the compressed layers
may cost. The allocators of :mod:`spaces.allocation` turn it into per-group channel counts or per-layer
ranks, greedily cutting where a unit of damage buys the most cost (AMC / NetAdapt / HALOC style). The
search's projection scales ``keep`` (``scale``), so a trial lands on its budget with an allocation made
for it, not with a sampled shape stretched onto it.

The record holds the allocated per-layer params and the inner space's record, so a plan replays without
the cost (no latency table needed to rebuild it). A ``keep`` below what the space can reach gives its
strongest allocation (as ``scale`` saturates elsewhere).

Use: subclass :class:`AllocatedSpace`, set ``inner`` (the space that builds the choices), call
``self._init(cost, min_keep, step)`` in ``__init__``, list the params in ``_fields`` and implement
:meth:`AllocatedSpace.allocation` (and ``suggest``); ``transform``, ``scale`` and replay come from here.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Mapping

from torch import nn

from spaces.allocation.greedy import Allocation
from spaces.allocation.layer_costs import LAYER_COSTS, LayerCost, get_layer_cost
from spaces.base import Context, Params, Record, Space, Transformed
from spaces.checks import check_fraction, check_no_extra
from spaces.errors import SpaceError

__all__ = ["AllocatedSpace"]


class AllocatedSpace(Space):
    """What both allocated spaces share: the cost, the sampled ``keep``, its scaling and replay."""

    inner: Space
    #: the space whose per-layer choices this one allocates (``search.run --allocate`` swaps it in)
    allocates: ClassVar[type] = Space
    #: how a cut's damage may be priced (the ``damage`` option); () where the damage is fixed
    damages: ClassVar[tuple[str, ...]] = ()
    _fields: tuple[str, ...] = ("keep",)

    def _init(self, cost: str, min_keep: float, step: float) -> None:
        if cost not in LAYER_COSTS:
            raise SpaceError(f"{self.name}: unknown cost {cost!r}; known: {', '.join(LAYER_COSTS)}")
        self.cost = cost
        self.step = check_fraction(self.name, "step", step, low_open=True)
        self.min_keep = check_fraction(self.name, "min_keep", min_keep, low_open=True, high=1 - self.step,
                                       high_open=False)

    def layer_cost(self, context: Context) -> LayerCost:
        """The layer cost this space allocates by (the context's latency table for ``latency``)."""
        try:
            return get_layer_cost(self.cost, table=context.latency_table)
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

    def allocation(self, model: nn.Module, params: Params, context: Context) -> Allocation:
        """The inner space's per-layer params for ``params`` (the greedy of :mod:`spaces.allocation`)."""
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
