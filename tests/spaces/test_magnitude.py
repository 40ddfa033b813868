"""Unstructured magnitude pruning: exact sparsity, permanent zeros, sparse size, no dense speed-up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from costs.counting import count_macs, count_nonzero_params, count_params, serialized_size, sparse_size
from spaces import SpaceError, get_space
from spaces.magnitude import prunable_layers
from tests.spaces.conftest import SIZE


def test_sparsity_is_exact_permanent_and_keeps_the_head(small, ctx):
    layers = prunable_layers(small, ctx.num_classes, include_head=False)
    assert "classifier.1" not in layers  # SqueezeNet's conv head stays dense
    pruned = get_space("prune.magnitude").apply(small, {"sparsity": dict.fromkeys(layers, 0.8)}, ctx)
    for name in layers:
        w = pruned.get_submodule(name).weight
        assert abs(float((w == 0).float().mean()) - 0.8) < 0.01
    assert not any("weight_orig" in k or "mask" in k for k in pruned.state_dict())  # no re-parametrisation
    assert count_params(pruned) == count_params(small)
    assert count_nonzero_params(pruned) < 0.3 * count_params(small)
    # no dense speed-up: same shapes, same MACs; only the sparse encoding shrinks
    assert count_macs(pruned, image_size=SIZE) == count_macs(small, image_size=SIZE)
    assert sparse_size(pruned) < 0.6 * serialized_size(pruned)


def test_smallest_magnitudes_go_first(ctx):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(ctx.num_classes))
    model(torch.zeros(1, 3, SIZE, SIZE))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1, 109, dtype=torch.float32).reshape(4, 3, 3, 3))
    pruned = get_space("prune.magnitude").apply(model, {"sparsity": {"0": 0.25}}, ctx)
    w = pruned[0].weight.reshape(-1)
    assert torch.all(w[:27] == 0) and torch.all(w[27:] != 0)


@pytest.mark.parametrize("value", [1.0, -0.5, "x", None])
def test_bad_sparsity(value, small, ctx):
    with pytest.raises(SpaceError, match=r"sparsity of layer 'features.0'"):
        get_space("prune.magnitude").apply(small, {"sparsity": {"features.0": value}}, ctx)


def test_unknown_layer_is_named(small, ctx):
    with pytest.raises(SpaceError, match="'features.99'"):
        get_space("prune.magnitude").apply(small, {"sparsity": {"features.99": 0.5}}, ctx)
