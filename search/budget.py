"""Cost budgets: ``<metric><op><value>[unit]``, parsed once, resolved against the base model.

A budget names a cost metric (``params``, ``nonzero_params``, ``macs``, ``size``, ``latency``),
a comparison and a limit, either absolute (``params<5M``, ``size<=2MB``, ``latency<20ms``) or
relative to the uncompressed base model (``macs<50%``). Several budgets are ANDed.

The metrics are the budgetable costs of :mod:`costs`'s registry, which says for each its cost
key, its unit grammar and whether it is *analytic* (counted from the model's structure, hence
projected before training) or *measured* (timed after building the model, hence an Optuna
constraint): a new cost registered there is a budget and an objective here, with no edit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from rsc.errors import BudgetInfeasible, UserError

__all__ = [
    "GRAMMAR",
    "BudgetError",
    "BudgetConflict",
    "BudgetInfeasible",
    "MetricSpec",
    "Budget",
    "Budgets",
    "get_metric",
    "list_metrics",
    "grammar",
    "parse_budget",
    "parse_budgets",
    "meets_budget",
    "repair_aim",
    "REPAIR_SPARE",
    "REPAIR_PASSES",
]


class BudgetError(UserError):
    """A budget that cannot be parsed or names an unknown metric or unit."""


class BudgetConflict(BudgetError):
    """Budgets that no model can satisfy together (e.g. ``params<1M`` and ``params>2M``)."""


@dataclass(frozen=True)
class MetricSpec:
    """A budget metric as the search sees it: a view of one registered :class:`costs.registry.CostMetric`.

    Attributes:
        name: the name used in budgets and objectives (``latency``).
        cost_key: the key the cost functions report it under (``latency_ms``); values in base units.
        kind: ``"analytic"`` (projected before training) or ``"measured"`` (an Optuna constraint).
        units: lower-case unit -> factor to the base unit; ``""`` is the bare number.
        base_unit: the base unit (``"byte"``, ``"ms"``).
    """

    name: str
    cost_key: str
    kind: str
    units: Mapping[str, float]
    base_unit: str = ""


def _specs() -> dict[str, MetricSpec]:
    from costs.registry import budget_metrics

    return {name: MetricSpec(name, c.name, c.kind, c.units, c.unit) for name, c in budget_metrics().items()}


def get_metric(name: str) -> MetricSpec:
    try:
        return _specs()[name]
    except KeyError:
        raise BudgetError(f"unknown budget metric {name!r}; known: {', '.join(list_metrics())}. {grammar()}") from None


def list_metrics() -> list[str]:
    return sorted(_specs())


def grammar() -> str:
    """The budget grammar, with the metrics and units registered now."""
    specs = _specs()
    units = "; ".join(f"{'/'.join(u for u in s.units if u) or 'no unit'} for {n}" for n, s in specs.items())
    return (f"budget grammar: <metric><op><value>[unit] with metric one of {', '.join(specs)}; "
            f"op one of <, <=, >, >=; unit {units}, or % of the base model; several budgets are ANDed; "
            "e.g. 'params<5M', 'macs<=50%', 'size<2MB', 'latency<20ms'")


GRAMMAR = grammar()

_PATTERN = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<value>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>%|[A-Za-z]*)\s*$"
)
_UPPER = ("<", "<=")


@dataclass(frozen=True)
class Budget:
    """One parsed budget. ``value`` is in the metric's base unit, or a percentage if ``relative``."""

    metric: str
    op: str
    value: float
    relative: bool = False
    text: str = ""

    @property
    def spec(self) -> MetricSpec:
        return get_metric(self.metric)

    @property
    def is_upper(self) -> bool:
        """True for ``<``/``<=``: a ceiling the projection can push a plan under."""
        return self.op in _UPPER

    @property
    def strict(self) -> bool:
        return self.op in ("<", ">")

    def limit(self, base: Mapping[str, float] | None = None) -> float:
        """The absolute limit, in the metric's base unit.

        Args:
            base: the base model's costs (keyed by cost key); needed only for relative budgets.
        """
        if not self.relative:
            return self.value
        key = self.spec.cost_key
        if base is None or key not in base:
            raise BudgetError(f"budget {self.text or self!r} is relative but the base model's {key} is unknown")
        return self.value / 100.0 * float(base[key])

    def check(self, costs: Mapping[str, float], base: Mapping[str, float] | None = None) -> bool:
        """Whether ``costs`` satisfies this budget (a missing or NaN cost does not)."""
        return self.violation(costs, base) <= 0.0

    def violation(self, costs: Mapping[str, float], base: Mapping[str, float] | None = None) -> float:
        """Optuna-style constraint value: ``<= 0`` when satisfied, else the relative excess.

        Relative so that budgets on different scales (bytes vs ms) weigh alike in constrained
        dominance; a strict budget met with equality counts as a tiny violation.
        """
        cost = costs.get(self.spec.cost_key)
        if cost is None or not math.isfinite(float(cost)):
            return math.inf
        limit = self.limit(base)
        scale = abs(limit) if limit else 1.0
        excess = (float(cost) - limit) if self.is_upper else (limit - float(cost))
        value = excess / scale
        if value == 0.0 and self.strict:
            return 1e-12
        return value

    def __str__(self) -> str:
        if self.text:
            return self.text
        return f"{self.metric}{self.op}{self.value:g}{'%' if self.relative else ''}"


def parse_budget(text: str) -> Budget:
    """Parse one budget string; anything unparseable raises :class:`BudgetError` quoting the grammar."""
    if not isinstance(text, str):
        raise BudgetError(f"budget must be a string, got {text!r}. {grammar()}")
    match = _PATTERN.match(text)
    if match is None:
        raise BudgetError(f"cannot parse budget {text!r}. {grammar()}")
    spec = get_metric(match["metric"].lower())
    value = float(match["value"])
    unit = match["unit"]
    relative = unit == "%"
    if not relative:
        factor = spec.units.get(unit.lower())
        if factor is None:
            known = ", ".join(u for u in spec.units if u) or "none"
            raise BudgetError(f"unknown unit {unit!r} in budget {text!r} for {spec.name} (units: {known}, or %). {grammar()}")
        value *= factor
    if value <= 0.0 and match["op"] in _UPPER:
        raise BudgetInfeasible(f"budget {text!r} asks for a {spec.name} at or below zero, which no model has")
    return Budget(spec.name, match["op"], value, relative, text.strip())


@dataclass(frozen=True)
class Budgets:
    """Budgets ANDed together, optionally resolved against a base model's costs."""

    items: tuple[Budget, ...] = ()
    base: Mapping[str, float] | None = field(default=None, compare=False)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def analytic(self) -> tuple[Budget, ...]:
        """Ceilings on analytic metrics: these are projected, so every trial meets them."""
        return tuple(b for b in self.items if b.spec.kind == "analytic" and b.is_upper)

    def projected_keys(self, predicted: Iterable[str] = ()) -> set[str]:
        """Cost keys whose ceilings are projected before training: the analytic ones, and the ceilings on
        ``predicted`` keys (``latency_ms`` from a latency table)."""
        predicted = set(predicted)
        return {b.spec.cost_key for b in self.items
                if b.is_upper and (b.spec.kind == "analytic" or b.spec.cost_key in predicted)}

    @property
    def constraints(self) -> tuple[Budget, ...]:
        """Everything not projected: measured metrics and floors. These become Optuna constraints."""
        return tuple(b for b in self.items if not (b.spec.kind == "analytic" and b.is_upper))

    def resolve(self, base: Mapping[str, float]) -> "Budgets":
        """Bind relative budgets to the base model's costs and check again for conflicts."""
        out = Budgets(self.items, dict(base))
        _check_conflicts(out.items, out.base)
        return out

    def limits(self) -> dict[str, float]:
        """Tightest ceiling per cost key (absolute units); requires :meth:`resolve` for relative ones."""
        out: dict[str, float] = {}
        for b in self.items:
            if b.is_upper:
                key = b.spec.cost_key
                out[key] = min(out.get(key, math.inf), b.limit(self.base))
        return out

    def violations(self, costs: Mapping[str, float]) -> list[float]:
        return [b.violation(costs, self.base) for b in self.items]

    def check(self, costs: Mapping[str, float], *, only: Iterable[Budget] | None = None) -> bool:
        return all(b.check(costs, self.base) for b in (self.items if only is None else only))

    def to_json(self) -> list[str]:
        return [str(b) for b in self.items]

    def __str__(self) -> str:
        return " and ".join(str(b) for b in self.items) if self.items else "none"


def parse_budgets(texts: Iterable[str] | str | None) -> Budgets:
    """Parse several budgets (ANDed); absolute ones are checked for conflicts right away.

    A single string may hold several budgets separated by commas or ``and``.
    """
    if texts is None:
        return Budgets()
    if isinstance(texts, str):
        texts = [texts]
    items: list[Budget] = []
    for text in texts:
        for part in re.split(r",|\s+and\s+|&", text):
            if part.strip():
                items.append(parse_budget(part))
    _check_conflicts(items, None)
    return Budgets(tuple(items))


def _check_conflicts(items: Iterable[Budget], base: Mapping[str, float] | None) -> None:
    """Raise if, for some metric, the floors lie above the ceilings. Relative budgets wait for ``base``."""
    by_metric: dict[str, list[Budget]] = {}
    for b in items:
        if b.relative and base is None:
            continue
        by_metric.setdefault(b.metric, []).append(b)
    for metric, budgets in by_metric.items():
        uppers = [b for b in budgets if b.is_upper]
        lowers = [b for b in budgets if not b.is_upper]
        if not uppers or not lowers:
            continue
        hi = min(uppers, key=lambda b: (b.limit(base), not b.strict))
        lo = max(lowers, key=lambda b: (b.limit(base), b.strict))
        h, l = hi.limit(base), lo.limit(base)
        if l > h or (l == h and (hi.strict or lo.strict)):
            raise BudgetConflict(
                f"budgets {str(lo)!r} and {str(hi)!r} conflict: no {metric} is both {lo.op} {l:g} and {hi.op} {h:g}"
            )


#: How far below the budget a repaired model is aimed, beyond the table's measured under-prediction.
REPAIR_SPARE = 0.03
#: How many times the final stage re-projects a model that still measures over a latency budget.
REPAIR_PASSES = 3


def repair_aim(budgets: Any, row: Mapping[str, Any], base: Mapping[str, Any], out: Mapping[str, Any]) -> float | None:
    """The predicted latency a final model over a latency budget should be re-projected onto, or None.

    Only a model whose latency was projected with a table (``latency_ms_predicted``) and measured over a
    latency ceiling: the table under-predicted it by ``measured / predicted``, so the same plan is aimed
    at the ceiling (read as the budget check reads it: a relative one against the base timed beside)
    scaled by that ratio, ``REPAIR_SPARE`` lower.
    """
    measured, predicted = row.get("latency_ms"), row.get("latency_ms_predicted")
    if row.get("meets_budget") is not False or not measured or not predicted:
        return None
    reference = _beside(base, out)
    ceilings = [b.limit(reference) for b in budgets if b.is_upper and b.spec.cost_key == "latency_ms"]
    if not ceilings or measured <= min(ceilings):
        return None  # over another budget, not latency's
    return float(predicted) * min(ceilings) / float(measured) * (1 - REPAIR_SPARE)


def meets_budget(budgets: Any, row: Mapping[str, Any], base: Mapping[str, Any],
                 out: Mapping[str, Any]) -> bool | None:
    """Whether a final model, as measured (latency on the real target), meets every budget; None without
    budgets. A relative latency budget reads the base timed beside the model in the same run, so a
    machine that is slower now than when the base was timed does not decide it."""
    if not budgets:
        return None
    return all(b.check(row, _beside(base, out)) for b in budgets)


def _beside(base: Mapping[str, Any], out: Mapping[str, Any]) -> dict[str, Any]:
    """The base's costs with its latency as timed beside the final model (``base_latency_ms``), where it was."""
    return {**base, **({"latency_ms": out["base_latency_ms"]} if out.get("base_latency_ms") else {})}
