"""Where each trial aims: objectives, the reachability check, and per-trial compression targets.

Before any training the search checks which method combinations can reach the analytic budget
at all (one structural build of each combination's strongest setting) and keeps their floors;
each trial then aims at a fraction of the budget (``target``), so that the trials spread along
the front instead of all landing on the budget.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from rsc.errors import BudgetInfeasible, ConfigError, UserError
from search.budget import Budgets, get_metric, list_metrics
from search.config import QUALITY_OBJECTIVES

__all__ = ["objective_specs", "target_key", "check_reachable", "trial_target", "spread_target"]


def objective_specs(names: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(objective name, result key, direction)`` for each objective name."""
    out = []
    for name in names:
        if name in QUALITY_OBJECTIVES:
            out.append((name, QUALITY_OBJECTIVES[name], "maximize"))
            continue
        try:
            spec = get_metric(name)
        except UserError:
            raise ConfigError(f"unknown objective {name!r}; known: accuracy, {', '.join(list_metrics())}") from None
        out.append((name, spec.cost_key, "minimize"))
    return out


def target_key(objectives: Sequence[tuple[str, str, str]]) -> str | None:
    """The first analytic cost objective: the cost each trial aims at a fraction of."""
    return next((k for n, k, d in objectives if d == "minimize" and get_metric(n).kind == "analytic"), None)


def check_reachable(joint: Any, budgets: Budgets, base_model: Any, base: Mapping[str, Any], context: Any,
                    image_size: int, say: Callable[[str], None], extra_keys: Sequence[str] = (),
                    predictors: Mapping[str, Callable[[Any], float]] | None = None) -> dict[str, dict[str, float]]:
    """Drop method combinations that cannot reach the analytic budget; none left is an error.

    One structural build of each combination's strongest setting - seconds, before any training.
    Returns each kept combination's strongest costs (its floor) on the budgeted keys and
    ``extra_keys``, which the per-trial targets must not go below. ``predictors`` are costs
    predicted before training (``latency_ms`` from a latency table), projected like the analytic ones.
    """
    from costs.registry import CostSettings, measure
    from spaces.base import Plan
    from spaces.compose import compress

    predictors = dict(predictors or {})
    analytic = budgets.projected_keys(predictors)
    limits = {k: v for k, v in budgets.limits().items() if k in analytic}
    keys = list(dict.fromkeys([*limits, *extra_keys]))
    if not keys:
        return {}
    settings = CostSettings(image_size=image_size)
    ok, best, floors = [], {k: math.inf for k in limits}, {}
    for combo in joint.combos:
        try:
            plan = Plan(base=dict(base), steps=joint.strongest(combo, base_model, context))
            model, _ = compress(base_model, plan, context, structure_only=True)
        except UserError as exc:
            say(f"note: {combo} cannot be built at full strength ({exc}); left out")
            continue
        costs = measure(model, [k for k in keys if k not in predictors], settings)
        costs.update({k: float(fn(model)) for k, fn in predictors.items() if k in keys})
        floors[combo] = {k: float(costs[k]) for k in keys}
        for k in limits:
            best[k] = min(best[k], costs[k])
        if all(costs[k] <= limits[k] for k in limits):
            ok.append(combo)
    if not ok:
        reach = ", ".join(f"{k} {best[k]:.4g} (budget {limits[k]:.4g})" for k in limits)
        raise BudgetInfeasible(f"budget {budgets} is below what methods {', '.join(joint.methods)} can reach: "
                               f"the most compressed plans give {reach}")
    dropped = [c for c in joint.combos if c not in ok]
    if dropped:
        say(f"note: {', '.join(dropped)} cannot reach budget {budgets}; searching {', '.join(ok)}")
    joint.restrict(ok)
    return {c: floors[c] for c in ok}


def trial_target(trial: Any, combo: str, *, key: str, ceiling: float, floors: Mapping[str, Mapping[str, float]],
                 min_target: float, headroom: float = 1.1) -> float:
    """The ceiling this trial's plan is projected onto, on the cost ``key`` (AMC-style clipping).

    ``target`` is a trial parameter in ``[min_target, 1]`` (log scale; set by
    :func:`spread_target` under ``--targets spread``, else sampled), a fraction of the
    ``ceiling`` (the budget on ``key``, or the base model's cost without one), so trials spread
    along the front instead of all landing on the budget - the sampled per-layer (or per-stage)
    choices then say how to distribute the compression, ``target`` how much. The result never
    goes below ``headroom`` times the combination's floor (its strongest plan), so no trial is
    infeasible because of it.
    """
    fraction = trial.suggest_float("target", min_target, 1.0, log=True)
    floor = float((floors.get(combo) or {}).get(key, 0.0))
    return min(ceiling, max(fraction * ceiling, headroom * floor))


def spread_target(index: int, *, min_target: float, seed: int) -> float:
    """The ``index``-th trial's target fraction under ``--targets spread``.

    The van der Corput sequence (base 2; scipy's unscrambled 1-D Halton sequence, from its second
    point) shifted by a seed-dependent offset, mapped log-uniformly onto ``[min_target, 1]``: the
    first trials already cover the compression levels (the first 7 fall in 7 different eighths
    of the log range), whatever the sampler does, and the sequence continues on ``--resume``.
    Measured why: TPE learned that cheap Tucker trials are non-dominated and put 0 of its 16
    guided trials above 0.6 of the budget in two of three runs, leaving the accurate end of its
    front empty.
    """
    from scipy.stats import qmc

    sequence = qmc.Halton(d=1, scramble=False)
    sequence.fast_forward(index + 1)
    u = float(sequence.random(1)[0, 0])
    u = (u + (seed * 0.6180339887498949) % 1.0) % 1.0
    return float(min_target ** (1.0 - u)) if min_target < 1.0 else 1.0
