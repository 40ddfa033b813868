from __future__ import annotations

import math

import pytest

from costs.registry import register_cost
from rsc.errors import ConfigError, UserError
from search.budget import (
    GRAMMAR,
    BudgetConflict,
    BudgetError,
    BudgetInfeasible,
    get_metric,
    list_metrics,
    parse_budget,
    parse_budgets,
)

BASE = {"params": 11_000_000, "nonzero_params": 11_000_000, "macs": 150e6, "size": 44e6, "latency_ms": 20.0}


@pytest.mark.parametrize(
    "text, metric, op, value, relative",
    [
        ("params<5M", "params", "<", 5e6, False),
        ("params <= 5.5m", "params", "<=", 5.5e6, False),
        ("nonzero_params<300K", "nonzero_params", "<", 3e5, False),
        ("macs<50%", "macs", "<", 50.0, True),
        ("MACS<1.5G", "macs", "<", 1.5e9, False),
        ("size<2MB", "size", "<", 2e6, False),
        ("size<=1MiB", "size", "<=", 2.0**20, False),
        ("size<100", "size", "<", 100.0, False),
        ("latency<20ms", "latency", "<", 20.0, False),
        ("latency<0.5s", "latency", "<", 500.0, False),
        ("latency<=250us", "latency", "<=", 0.25, False),
        ("params>1e5", "params", ">", 1e5, False),
        ("params>=10%", "params", ">=", 10.0, True),
    ],
)
def test_parse(text, metric, op, value, relative):
    b = parse_budget(text)
    assert (b.metric, b.op, b.relative) == (metric, op, relative)
    assert b.value == pytest.approx(value)
    assert str(b) == text.strip()


@pytest.mark.parametrize("text", ["", "params", "params<", "<5M", "params=5M", "params<5MX", "params<-1", "params<<5"])
def test_unparseable_quotes_grammar(text):
    with pytest.raises(BudgetError) as info:
        parse_budget(text)
    assert GRAMMAR in str(info.value)
    assert isinstance(info.value, UserError)


def test_unknown_metric_lists_known():
    with pytest.raises(BudgetError, match="unknown budget metric 'flops'.*params"):
        parse_budget("flops<5M")


def test_unit_of_another_metric_is_refused():
    with pytest.raises(BudgetError, match="unknown unit 'ms'.*params"):
        parse_budget("params<5ms")
    with pytest.raises(BudgetError, match="unknown unit 'M'"):
        parse_budget("latency<5M")


def test_zero_ceiling_is_infeasible():
    with pytest.raises(BudgetInfeasible):
        parse_budget("params<0")


def test_relative_resolves_against_base():
    b = parse_budget("macs<50%")
    assert b.limit(BASE) == pytest.approx(75e6)
    assert b.check({"macs": 70e6}, BASE)
    assert not b.check({"macs": 80e6}, BASE)
    with pytest.raises(BudgetError, match="relative"):
        b.limit(None)


def test_strict_and_inclusive_edges():
    assert not parse_budget("params<100").check({"params": 100})
    assert parse_budget("params<=100").check({"params": 100})
    assert parse_budget("params>=100").check({"params": 100})
    assert not parse_budget("params>100").check({"params": 100})


def test_violation_is_relative_and_signed():
    b = parse_budget("latency<10ms")
    assert b.violation({"latency_ms": 15.0}) == pytest.approx(0.5)
    assert b.violation({"latency_ms": 5.0}) == pytest.approx(-0.5)
    assert b.violation({}) == math.inf
    assert b.violation({"latency_ms": math.nan}) == math.inf
    assert not b.check({"latency_ms": math.nan})


def test_several_budgets_are_anded_and_split():
    budgets = parse_budgets(["params<5M", "macs<50%, latency<30ms"]).resolve(BASE)
    assert len(budgets) == 3
    assert budgets.check({"params": 4e6, "macs": 60e6, "latency_ms": 10.0})
    assert not budgets.check({"params": 6e6, "macs": 60e6, "latency_ms": 10.0})
    assert not budgets.check({"params": 4e6, "macs": 60e6, "latency_ms": 40.0})
    assert [b.metric for b in budgets.analytic] == ["params", "macs"]
    assert [b.metric for b in budgets.constraints] == ["latency"]
    assert budgets.limits() == {"params": 5e6, "macs": 75e6, "latency_ms": 30.0}
    assert budgets.to_json() == ["params<5M", "macs<50%", "latency<30ms"]
    assert parse_budgets("params<5M and size<1MB").to_json() == ["params<5M", "size<1MB"]


def test_tightest_ceiling_wins():
    budgets = parse_budgets(["params<5M", "params<20%"]).resolve(BASE)
    assert budgets.limits()["params"] == pytest.approx(2.2e6)


def test_floor_is_a_constraint_not_projected():
    budgets = parse_budgets(["params>1M", "params<5M"])
    assert [str(b) for b in budgets.analytic] == ["params<5M"]
    assert [str(b) for b in budgets.constraints] == ["params>1M"]


def test_no_budget():
    budgets = parse_budgets(None)
    assert not budgets and str(budgets) == "none" and budgets.check({"params": 1})


@pytest.mark.parametrize(
    "texts",
    [["params<1M", "params>2M"], ["params<1M", "params>=1M"], ["latency<5ms", "latency>10ms"]],
)
def test_absolute_conflicts_fail_at_parse(texts):
    with pytest.raises(BudgetConflict, match="conflict"):
        parse_budgets(texts)


def test_relative_conflict_found_at_resolve():
    budgets = parse_budgets(["params<10%", "params>2M"])  # 10% of 11M = 1.1M < 2M
    with pytest.raises(BudgetConflict, match="params"):
        budgets.resolve(BASE)
    parse_budgets(["params<50%", "params>2M"]).resolve(BASE)  # 5.5M > 2M: fine


def test_same_bound_inclusive_is_not_a_conflict():
    """An inclusive floor and ceiling at one value are kept (no conflict) and admit exactly that value;
    the same pair against a base (a relative ceiling resolving onto the floor) behaves alike."""
    budgets = parse_budgets(["params<=1M", "params>=1M"])
    assert [(b.metric, b.op, b.value) for b in budgets] == [("params", "<=", 1e6), ("params", ">=", 1e6)]
    assert [str(b) for b in budgets.analytic] == ["params<=1M"] and [str(b) for b in budgets.constraints] == ["params>=1M"]
    assert budgets.check({"params": 1e6})
    assert not budgets.check({"params": 1e6 + 1}) and not budgets.check({"params": 1e6 - 1})
    assert budgets.violations({"params": 1e6}) == [0.0, 0.0]
    resolved = parse_budgets(["params<=50%", "params>=5.5M"]).resolve(BASE)  # 50% of 11M
    assert resolved.limits() == {"params": 5.5e6} and resolved.check({"params": 5.5e6})
    assert not resolved.check({"params": 5.5e6 + 1}) and not resolved.check({"params": 5.5e6 - 1})


def test_registry_is_pluggable_and_refuses_duplicates():
    assert {"params", "nonzero_params", "macs", "size", "latency"} <= set(list_metrics())
    assert get_metric("latency").kind == "measured" and get_metric("latency").cost_key == "latency_ms"
    with pytest.raises(ConfigError, match="already registered"):
        register_cost("params_again", unit="count", budget="params")(lambda m, s: 0.0)
    name = "energy_test_only"
    if name not in list_metrics():  # a cost registered once is a budget metric, with its unit grammar
        register_cost("energy_test_only_mj", unit="mJ", measured=True, budget=name,
                      units={"": 1.0, "mj": 1.0, "j": 1e3})(lambda m, s: 0.0)
    b = parse_budget(f"{name}<2J")
    assert b.value == 2000.0 and b.check({"energy_test_only_mj": 1500.0})
    assert not b.check({"energy_test_only_mj": 2500.0})
