"""Allocation by params and by measured sensitivity: a params budget cut where the parameters are, each
group's loss rise measured with BatchNorm re-estimated, memoised by weights, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from costs.counting import count_params
from spaces import SpaceError, get_space
from spaces import allocation as A
from spaces.allocation import damage as D
from spaces.base import Context
from spaces.prune import prunable_groups
from tests.spaces.conftest import NUM_CLASSES, SIZE


def _layer_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


def test_params_cost_counts_every_conv_and_linear_parameter(resnet18, ctx):
    assert A.summed_cost(resnet18, ctx, A.params_cost) == _layer_params(resnet18)
    assert A.get_layer_cost("params") is A.params_cost


def test_a_params_allocation_meets_its_budget_and_cuts_where_the_parameters_are(resnet18, ctx):
    space = get_space("prune.channel")
    al = A.channel_allocation(space, resnet18, ctx, cost=A.params_cost, keep=0.25)
    pruned = space.apply(resnet18, al.params, ctx)
    assert al.fraction <= 0.25 * (1 + 1e-9)
    assert _layer_params(pruned) == pytest.approx(al.cost, rel=1e-9)
    assert count_params(pruned) < 0.26 * count_params(resnet18)
    # the last stage holds ~75% of ResNet-18's weights: it is cut deeper than the stem
    assert al.choices["layer4.0.conv1"] / 512 < al.choices["conv1"] / 64


def _counting(space, monkeypatch):
    calls = []
    real = space.transform
    monkeypatch.setattr(space, "transform", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


def test_sensitivity_is_measured_per_group_and_memoised_by_the_weights(resnet18, ctx, monkeypatch):
    space = get_space("prune.channel", criteria=("l1",), round_to_choices=(8,), max_ratio=0.8)
    calls = _counting(space, monkeypatch)
    sens = A.channel_sensitivity(space, resnet18, ctx, points=2)
    groups = {g.name for g in prunable_groups(resnet18, ctx)}
    assert set(sens) == groups
    for name, points in sens.items():
        assert 1 <= len(points) <= 2, name
        kept = [k for k, _ in points]
        assert kept == sorted(kept, reverse=True)  # deeper cuts last
        assert all(rise >= 0.0 for _, rise in points)
    assert any(rise > 0 for pts in sens.values() for _, rise in pts)  # pruning a random net does move its loss
    n = len(calls)
    assert n == sum(len(p) for p in sens.values())
    # the same weights in another object (a search loads its base afresh every trial): no new measurement
    assert A.channel_sensitivity(space, copy.deepcopy(resnet18), ctx, points=2) == sens
    assert len(calls) == n
    # other weights, or other calibration batches: measured again
    other = copy.deepcopy(resnet18)
    with torch.no_grad():
        other.fc.weight.mul_(2.0)
    A.channel_sensitivity(space, other, ctx, points=2)
    assert len(calls) == 2 * n


def test_a_sensitive_group_is_kept_and_the_budget_still_met(resnet18, ctx, monkeypatch):
    space = get_space("prune.channel")
    plain = A.channel_allocation(space, resnet18, ctx, cost=A.params_cost, keep=0.3)
    victim = max(plain.choices, key=lambda n: plain.params["ratios"][n])  # the group the L1 share cuts most

    def fake(space_, model, context, *, criterion, round_to, **_):
        return {victim: [(8, 100.0)]}  # any cut of the victim is ruinous, every other group is free
    monkeypatch.setattr("spaces.allocation.channels.channel_sensitivity", fake)
    al = A.channel_allocation(space, resnet18, ctx, cost=A.params_cost, keep=0.3, damage="sensitivity")
    assert al.fraction <= 0.3 * (1 + 1e-9)
    assert al.params["ratios"][victim] == 0.0
    assert plain.params["ratios"][victim] > 0.0


def test_interpolation_between_measured_depths_is_linear_and_never_decreasing():
    options = [(64, 0.0), (56, 0.1), (48, 0.2), (40, 0.3), (32, 0.4), (24, 0.6)]
    out = D.interpolated_damage(options, [(48, 0.2), (24, 0.1)])
    assert out[0] == 0.0
    assert out[1] == pytest.approx(0.1)   # halfway from the whole group (0) to 48 channels (0.2)
    assert out[2] == pytest.approx(0.2)
    assert out == sorted(out)             # the dip at 24 channels (measurement noise) is flattened
    assert out[-1] == pytest.approx(0.2)
    assert D._sampled(0, 4) == [] and D._sampled(10, 4) == [2, 5, 8, 10] and D._sampled(2, 4) == [1, 2]


def test_the_allocated_space_takes_the_damage_and_meets_its_keep(resnet18, ctx):
    space = get_space("prune.allocated", cost="params", damage="sensitivity")
    done = space.transform(resnet18, {"criterion": "l1", "round_to": 8, "keep": 0.3}, ctx)
    assert done.record["predicted_fraction"] <= 0.3 + 1e-6
    assert _layer_params(done.model) <= 0.3 * _layer_params(resnet18) * (1 + 1e-9)


def test_bad_damage_and_missing_calibration_are_refused(resnet18, ctx):
    space = get_space("prune.channel")
    with pytest.raises(SpaceError, match="unknown damage 'loss'; known: importance, sensitivity"):
        A.channel_allocation(space, resnet18, ctx, cost=A.params_cost, keep=0.5, damage="loss")
    bare = Context(num_classes=NUM_CLASSES, image_size=SIZE)
    with pytest.raises(SpaceError, match="damage 'sensitivity' needs calibration batches"):
        A.channel_allocation(space, resnet18, bare, cost=A.params_cost, keep=0.5, damage="sensitivity")
    with pytest.raises(SpaceError, match="unknown damage 'loss'"):
        get_space("prune.allocated", damage="loss")
