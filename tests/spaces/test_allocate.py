"""Cost-aware per-layer allocation: budgets met as predicted, compression put where the cost is, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from costs.counting import count_macs
from costs.energy import estimate_energy
from spaces import SpaceError, get_space
from spaces import allocation as A
from tests.spaces.conftest import NUM_CLASSES, SIZE, make


def _params_of(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


@pytest.mark.parametrize("keep", [0.5, 0.25])
def test_channel_allocation_meets_macs_as_predicted(resnet18, ctx, keep):
    before = _params_of(resnet18)
    space = get_space("prune.channel")
    al = A.channel_allocation(space, resnet18, ctx, cost=A.macs_cost, keep=keep)
    assert al.fraction <= keep * (1 + 1e-9)
    assert al.fraction > keep - 0.1  # it does not overshoot by much
    pruned = space.apply(resnet18, al.params, ctx)
    # the prediction is the built model's count: every Conv/Linear layer is priced
    assert count_macs(pruned, image_size=SIZE) == pytest.approx(al.cost, rel=1e-9)
    assert count_macs(resnet18, image_size=SIZE) == pytest.approx(al.base_cost, rel=1e-9)
    assert A.summed_cost(pruned, ctx, A.macs_cost) == pytest.approx(al.cost, rel=1e-9)
    assert pruned.fc.out_features == NUM_CLASSES
    for name, kept in al.choices.items():
        assert kept % 8 == 0 or kept == 0 or kept < 8, (name, kept)
    after = _params_of(resnet18)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is not mutated


def test_channel_allocation_is_not_uniform(resnet18, ctx):
    """Per-group choices, not one global ratio: the built model has the chosen channels in every group,
    meets keep of the summed MACs tightly (one rounding step back in some group breaks it), and its cut
    removes less channel importance than the lightest uniform cut that meets the same budget."""
    from spaces.allocation.damage import kept_choices
    from spaces.prune import dependency_groups, importance_of, kept_channels, prunable_groups, trace_dependencies

    space, keep = get_space("prune.channel"), 0.5
    al = A.channel_allocation(space, resnet18, ctx, cost=A.macs_cost, keep=keep)
    channels = {g.name: g.channels for g in prunable_groups(resnet18, ctx)}
    assert set(al.choices) == set(al.params["ratios"]) == set(channels)
    round_to = al.params["round_to"]
    base = A.summed_cost(resnet18, ctx, A.macs_cost)

    def built(ratios):
        model = space.apply(resnet18, {**al.params, "ratios": ratios}, ctx)
        return model, A.summed_cost(model, ctx, A.macs_cost) / base

    pruned, fraction = built(al.params["ratios"])
    assert fraction <= keep * (1 + 1e-9)
    assert {n: pruned.get_submodule(n).out_channels for n in channels} == al.choices
    assert len({round(al.choices[n] / c, 3) for n, c in channels.items()}) > 2  # kept shares differ by group
    cut = [n for n in channels if al.choices[n] < channels[n]]
    assert cut and len(cut) < len(channels)  # some groups are cut, not all alike

    def one_step_back(name):
        up = [r for k, r in kept_choices(channels[name], round_to, space.max_ratio) if k > al.choices[name]][-1]
        return built({**al.params["ratios"], name: up})[1]

    assert any(one_step_back(n) > keep for n in cut), "the allocation overshoots keep by more than a step"

    dg = trace_dependencies(resnet18, ctx.example_input(1))
    with torch.no_grad():
        scores = {n: torch.sort(importance_of("l1")(g)).values for n, g in dependency_groups(resnet18, dg, ctx)}

    def damage(kept):  # the importance share each group loses, summed (the allocator's own measure)
        return sum(float(s[: len(s) - kept[n]].sum() / s.sum()) for n, s in scores.items())

    for ratio in (r / 20 for r in range(1, 17)):  # the lightest uniform cut within keep
        if built({n: ratio for n in channels})[1] <= keep:
            break
    else:
        pytest.fail("no uniform ratio up to 0.8 meets keep")
    uniform = {n: kept_channels(c, ratio, round_to) for n, c in channels.items()}
    assert damage(al.choices) < damage(uniform), (ratio, damage(al.choices), damage(uniform))


@pytest.mark.parametrize("keep", [0.5, 0.3])
def test_tucker_allocation_meets_its_cost_as_predicted(resnet18, ctx, keep):
    space = get_space("decompose.tucker")
    al = A.tucker_allocation(space, resnet18, ctx, cost=A.macs_cost, keep=keep)
    assert al.fraction <= keep * (1 + 1e-9)
    done = space.transform(resnet18, al.params, ctx)
    # the eligible layers' cost is the prediction; the rest (stem, head) is unchanged
    rest = A.summed_cost(resnet18, ctx, A.macs_cost) - al.base_cost
    assert A.summed_cost(done.model, ctx, A.macs_cost) == pytest.approx(al.cost + rest, rel=1e-9)
    assert done.record["ranks"] == al.choices or all(done.record["ranks"][k] == v for k, v in al.choices.items())


def test_energy_aware_pruning_cuts_energy_more_than_macs_allocation(resnet18, ctx):
    space = get_space("prune.channel")
    e_cost = A.get_layer_cost("energy")
    by_energy = space.apply(resnet18, A.allocate_channels(space, resnet18, ctx, cost=e_cost, keep=0.5), ctx)
    by_macs = space.apply(resnet18, A.allocate_channels(space, resnet18, ctx, cost=A.macs_cost, keep=0.5), ctx)
    base_e = A.summed_cost(resnet18, ctx, e_cost)
    e_of_energy = A.summed_cost(by_energy, ctx, e_cost) / base_e
    e_of_macs = A.summed_cost(by_macs, ctx, e_cost) / base_e
    assert e_of_energy <= 0.5 * (1 + 1e-9)
    assert e_of_energy < e_of_macs
    # the per-layer sum is the analytical model's whole-model figure
    assert estimate_energy(by_energy, SIZE) * 1e12 == pytest.approx(A.summed_cost(by_energy, ctx, e_cost), rel=1e-6)


class _SlowStage:
    """A latency table stand-in: convs on 2x2 inputs (ResNet-18's layer3 at 32 px) cost 100x per MAC."""

    def __init__(self):
        self.calls = 0

    def layer_cost(self, module, input_shape):
        self.calls += 1
        slow = len(input_shape) == 4 and input_shape[-1] == 2
        return A.macs_cost(module, input_shape) * (100.0 if slow else 1.0) / 1e6


def test_latency_allocation_cuts_where_the_table_says_time_goes(resnet18, ctx):
    table = _SlowStage()
    space = get_space("prune.channel")
    cost = A.get_layer_cost("latency", table=table)
    al = A.channel_allocation(space, resnet18, ctx, cost=cost, keep=0.7)
    by_macs = A.channel_allocation(space, resnet18, ctx, cost=A.macs_cost, keep=0.7)
    layer3 = [k for k in al.choices if k.startswith("layer3")]
    assert layer3
    # layer3 (256 channels) is where the "time" is: it loses more channels than under MACs
    assert sum(al.choices[k] for k in layer3) < sum(by_macs.choices[k] for k in layer3)
    assert table.calls < 2000  # memoised per layer shape


def test_allocation_is_deterministic(resnet18, ctx):
    space = get_space("decompose.tucker")
    a = A.allocate_tucker(space, resnet18, ctx, cost=A.macs_cost, keep=0.4)
    b = A.allocate_tucker(space, resnet18, ctx, cost=A.macs_cost, keep=0.4)
    assert a == b


def test_mobilenet_depthwise_groups_move_together(ctx):
    model = make("mobilenet_v2")
    space = get_space("prune.channel")
    al = A.channel_allocation(space, model, ctx, cost=A.macs_cost, keep=0.5)
    pruned = space.apply(model, al.params, ctx)
    assert count_macs(pruned, image_size=SIZE) == pytest.approx(al.cost, rel=1e-9)
    with torch.no_grad():
        assert pruned(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, NUM_CLASSES)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, math.nan, "half"])
def test_bad_keep_is_refused(resnet18, ctx, keep):
    with pytest.raises(SpaceError, match="keep"):
        A.channel_allocation(get_space("prune.channel"), resnet18, ctx, cost=A.macs_cost, keep=keep)


def test_unreachable_keep_names_the_best_reachable(resnet18, ctx):
    with pytest.raises(SpaceError, match=r"not reachable: the best reachable is 0\.\d+"):
        A.channel_allocation(get_space("prune.channel", max_ratio=0.5), resnet18, ctx, cost=A.macs_cost, keep=0.01)
    with pytest.raises(SpaceError, match="not reachable"):
        A.tucker_allocation(get_space("decompose.tucker"), resnet18, ctx, cost=A.macs_cost, keep=0.001)


def test_bad_costs_and_spaces_are_refused(resnet18, ctx):
    with pytest.raises(SpaceError, match="latency table"):
        A.get_layer_cost("latency")
    with pytest.raises(SpaceError, match="unknown layer cost 'joules'"):
        A.get_layer_cost("joules")
    with pytest.raises(SpaceError, match="no layer_cost"):
        A.get_layer_cost("latency", table=object())
    with pytest.raises(SpaceError, match="needs a ChannelPruning space"):
        A.channel_allocation(get_space("decompose.tucker"), resnet18, ctx, cost=A.macs_cost, keep=0.5)
    with pytest.raises(SpaceError, match="needs a TuckerDecomposition space"):
        A.tucker_allocation(get_space("prune.channel"), resnet18, ctx, cost=A.macs_cost, keep=0.5)
    with pytest.raises(SpaceError, match="expected a finite number >= 0"):
        A.channel_allocation(get_space("prune.channel"), resnet18, ctx, cost=lambda m, s: -1.0, keep=0.5)
    with pytest.raises(SpaceError, match="must be callable"):
        A.channel_allocation(get_space("prune.channel"), resnet18, ctx, cost="macs", keep=0.5)
    with pytest.raises(SpaceError, match="unknown criterion"):
        A.channel_allocation(get_space("prune.channel"), resnet18, ctx, cost=A.macs_cost, keep=0.5, criterion="x")


def test_layer_cost_refuses_other_modules():
    with pytest.raises(SpaceError, match="neither a Conv nor a Linear"):
        A.macs_cost(nn.ReLU(), (1, 3, 8, 8))
