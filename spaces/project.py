"""Projection: move a plan's sampled choices just far enough that the model fits a budget.

The one projection of the project (AMC-style clipping, He et al. 2018): every step's choices
are scaled by one global factor (``Space.scale``) until a structural build of the whole chain
fits, so ``prune then quant`` under a size budget is judged on the quantised model and all steps
move together. A trial is moved onto the budget instead of being wasted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torch import nn

from spaces.base import Context, Plan, Step
from spaces.errors import BudgetInfeasible

__all__ = ["cost_gap", "project_plan"]

Gap = Callable[[nn.Module], float]


def cost_gap(limits: Mapping[str, float], image_size: int,
             predictors: Mapping[str, Callable[[nn.Module], float]] | None = None) -> Gap:
    """``gap(model)``: the largest ``log(cost / limit)`` over the ceilings (``<= 0`` fits).

    Counted costs only (no timing; no serialisation unless ``size`` is limited), so a probe is cheap.
    ``predictors`` give costs that are predicted rather than counted, by cost key (``latency_ms``
    from a latency table: :meth:`costs.latency.table.LatencyTable.predict`).
    """
    from costs.registry import CostSettings, measure

    settings = CostSettings(image_size=image_size)
    predictors = dict(predictors or {})
    names = [k for k in limits if k not in predictors]

    def gap(model: nn.Module) -> float:
        costs = measure(model, names, settings)
        costs.update({k: float(fn(model)) for k, fn in predictors.items() if k in limits})
        return max(math.log(max(costs[k], 1e-12) / limits[k]) for k in limits)

    return gap


def project_plan(model: nn.Module, plan: Plan, context: Context, gap: Gap, *, tolerance: float = 0.03,
                 max_probes: int = 8, max_doublings: int = 8, fallback: Gap | None = None,
                 probe_post_training: bool = True) -> tuple[Plan, float]:
    """Scale every step's choices by one factor, just enough that the structural build fits.

    ``gap(model)`` is ``log(cost / limit)`` maximised over the ceilings (:func:`cost_gap`). The
    factor is bracketed by doubling, then found by regula falsi (Illinois) on that gap, stopping
    once the plan fits within ``tolerance`` of the budget: typically 3 to 5 structural builds, each
    of which traces the network. Where the rounded cost sits on a plateau just over the budget, the
    probes gallop off it from its near end, then bisect its edge (Illinois alone creeps there).

    Why not ``scipy.optimize.brentq``: the gap is a step function of the factor (channels and
    ranks are rounded), so there is no root to converge on; what is wanted is any factor on the
    *fitting* side whose gap lies within ``tolerance`` of zero - a stop on the gap, not on the
    factor, which brentq's ``xtol``/``rtol`` cannot express - and brentq returns either side of
    the step. Changing the probe sequence would also change which plans a seeded search trains.

    Args:
        model: the trained base model (not mutated).
        plan: the sampled steps (records, if any, are ignored by the probes' structural builds).
        context: task facts; probes build with ``structure_only``.
        gap: the ceilings to meet.
        fallback: a looser gap (the hard budget when ``gap`` is a trial's target below it). When
            no factor meets ``gap`` - the sampled choices saturate, e.g. layers sampled at ratio 0
            stay at 0 - the most compressed scaling is kept if it meets ``fallback``, so a target
            deeper than a sample can reach costs no trial.
        probe_post_training: build post-training steps (int8) in the probes too; False is right
            when no ceiling is on ``size`` (quantising never raises a count of weights or MACs), and
            saves an int8 conversion per probe (4.5 of a 7.7 s trial on an H200).

    Returns:
        The projected plan and the factor (1.0 when the sample already fitted).

    Raises:
        BudgetInfeasible: no factor brings the chain under the budget.
    """
    from spaces.compose import compress, space_of, split_plan

    spaces = [space_of(s) for s in plan.steps]
    slack = math.log1p(-tolerance)

    def scaled(factor: float) -> Plan:
        return Plan(base=plan.base, steps=tuple(
            Step(space=s.space, params=sp.scale(s.params, factor), options=s.options)
            for s, sp in zip(plan.steps, spaces)))

    def probe_with(cand: Plan, fn: Gap) -> float:
        built, _ = compress(model, cand if probe_post_training else split_plan(cand)[0], context,
                            structure_only=True)
        return float(fn(built))

    def probe(cand: Plan) -> float:
        return probe_with(cand, gap)

    base = scaled(1.0)  # the sample itself (``scale``'s contract: factor 1 returns equal params)
    g_lo = probe(base)
    if g_lo <= 0:
        return base, 1.0
    lo, hi, g_hi, prev = 1.0, None, math.inf, base
    for _ in range(max_doublings):
        cand = scaled(lo * 2)
        g = probe(cand)
        if g <= 0:
            hi, g_hi = lo * 2, g
            break
        if [c.params for c in cand.steps] == [p.params for p in prev.steps]:
            break  # saturated: stronger factors change nothing
        lo, g_lo, prev = lo * 2, g, cand
    if hi is None and fallback is not None and probe_with(prev, fallback) <= 0:
        return prev, lo
    if hi is None:
        names = "+".join(s.space for s in plan.steps)
        raise BudgetInfeasible(f"{names}: no scaling of the sampled choices fits the budget (factors up to {lo:g})")
    side, w_lo, w_hi = 0, g_lo, g_hi  # w_*: Illinois-weighted copies used only to interpolate
    flat, stride = False, 0.0  # lo sits on a plateau; the next gallop step off it (0: bisect)
    for _ in range(max_probes):
        if g_hi >= slack:
            break  # fits, and uses the budget to within the tolerance
        mid = hi - w_hi * (hi - lo) / (w_hi - w_lo) if w_hi != w_lo else (lo + hi) / 2
        if not lo < mid < hi:
            mid = (lo + hi) / 2
        if flat:
            mid = max(mid, min(lo + stride, (lo + hi) / 2)) if stride else (lo + hi) / 2
        g = probe(scaled(mid))
        if g <= 0:
            hi, g_hi, w_hi, stride = mid, g, g, 0.0  # past a plateau's edge: it lies in (lo, hi], bisect
            if side == -1:
                w_lo /= 2
            side = -1
        else:
            # No progress: a plateau of the rounded cost just above the budget. Illinois would creep
            # off it (its step only doubles per probe) and, out of probes, keep the far end however
            # far past the budget; gallop off it from the near end instead, 4x further each probe and
            # never past the bracket's middle, so the first factor that fits lies close to the edge.
            if g < g_lo:
                flat, stride = False, 0.0
            elif not flat or stride:
                flat, stride = True, 4 * (mid - lo)
            lo, g_lo, w_lo = mid, g, g
            if side == 1:
                w_hi /= 2
            side = 1
    return scaled(hi), hi
