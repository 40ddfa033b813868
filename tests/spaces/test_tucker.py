"""Tucker-2 / SVD decomposition: exactness at full rank, cost reduction, VBMF, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from costs.counting import count_macs, count_params
from spaces import Context, SpaceError, get_space
from spaces.vbmf import evbmf_rank
from tests.spaces.conftest import NUM_CLASSES, SIZE, make


class _Tiny(nn.Module):
    def __init__(self, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(16, 24, 3, stride=2, padding=2, dilation=2, bias=True, groups=groups)
        self.fc = nn.Linear(24, 32)
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        return self.head(torch.relu(self.fc(self.conv(x).mean((2, 3)))))


def _ctx():
    return Context(num_classes=NUM_CLASSES, image_size=SIZE)


def test_full_rank_tucker_and_svd_reproduce_the_layer():
    torch.manual_seed(0)
    model = _Tiny().eval()
    space = get_space("decompose.tucker")
    conv_seq = space._tucker(model.conv, 24, 16, "conv", structure_only=False)
    x = torch.randn(2, 16, 12, 12)
    torch.testing.assert_close(conv_seq(x), model.conv(x), atol=1e-4, rtol=1e-4)
    c0, c1, c2 = conv_seq
    assert (c1.stride, c1.padding, c1.dilation) == ((2, 2), (2, 2), (2, 2))
    assert c0.kernel_size == (1, 1) and c2.kernel_size == (1, 1) and c2.bias is not None
    from spaces.tucker import _svd_linear

    fc = _svd_linear(model.fc, 24, structure_only=False)
    z = torch.randn(3, 24)
    torch.testing.assert_close(fc(z), model.fc(z), atol=1e-4, rtol=1e-4)


def test_low_rank_cuts_cost_and_keeps_head(resnet18, ctx, x):
    space = get_space("decompose.tucker")
    params = {"conv": {n: [0.25, 0.25] for n in space.conv_layers(resnet18, ctx)}, "fc": {}}
    done = space.transform(resnet18, params, ctx)
    assert done.record["ranks"]["layer4.1.conv2"] == [128, 128]
    assert count_macs(done.model, image_size=SIZE) < 0.5 * count_macs(resnet18, image_size=SIZE)
    assert count_params(done.model) < 0.5 * count_params(resnet18)
    assert done.model.fc.out_features == NUM_CLASSES
    with torch.no_grad():
        assert done.model(x).shape == (2, NUM_CLASSES)


def test_layers_not_worth_decomposing_are_left_alone(small, ctx):
    space = get_space("decompose.tucker")
    done = space.transform(small, {"conv": {n: [1.0, 1.0] for n in space.conv_layers(small, ctx)}}, ctx)
    assert done.record["ranks"] == {}
    assert count_params(done.model) == count_params(small)


def test_vbmf_finds_the_planted_rank_and_gives_a_reference_point():
    rng = np.random.default_rng(0)
    low = rng.normal(size=(64, 6)) @ rng.normal(size=(6, 300)) + 0.05 * rng.normal(size=(64, 300))
    assert evbmf_rank(low) == 6
    torch.manual_seed(0)
    model = _Tiny()
    with torch.no_grad():  # plant rank-4 structure in both channel modes of the conv
        core, u_out, u_in = torch.randn(4, 4, 3, 3), torch.randn(24, 4), torch.randn(16, 4)
        w = torch.einsum("abkl,oa,ib->oikl", core, u_out, u_in)
        model.conv.weight.copy_(w + 0.01 * torch.randn(24, 16, 3, 3))
    ref = get_space("decompose.tucker").reference_params(model, _ctx())
    f_out, f_in = ref["conv"]["conv"]
    assert f_out == pytest.approx(0.2)  # 4/24 rounded up to the 0.05 grid
    assert f_in == pytest.approx(0.25)  # 4/16
    assert set(ref["fc"]) == {"fc"}


def test_bad_ranks_and_layers():
    model, ctx = _Tiny(), _ctx()
    space = get_space("decompose.tucker")
    with pytest.raises(SpaceError, match=r"rank 36 above its 24 channels"):
        space.apply(model, {"conv": {"conv": [1.5, 0.5]}}, ctx)
    with pytest.raises(SpaceError, match=r"f_in of layer 'conv'"):
        space.apply(model, {"conv": {"conv": [0.5, 0.0]}}, ctx)
    with pytest.raises(SpaceError, match=r"\[f_out, f_in\]"):
        space.apply(model, {"conv": {"conv": 0.5}}, ctx)
    with pytest.raises(SpaceError, match="'head'"):
        space.apply(model, {"fc": {"head": 0.5}}, ctx)
    with pytest.raises(SpaceError, match="grouped conv"):
        space.apply(_Tiny(groups=8), {"conv": {"conv": [0.5, 0.5]}}, ctx)


def test_depthwise_layers_of_mobilenet_are_refused_by_name(ctx):
    model = make("mobilenet_v2")
    with pytest.raises(SpaceError, match=r"'features.1.conv.0.0'.*grouped conv"):
        get_space("decompose.tucker").apply(model, {"conv": {"features.1.conv.0.0": [0.5, 0.5]}}, ctx)


@pytest.mark.parametrize("shape", [(48, 20), (20, 48)])
def test_truncated_svd_of_a_linear_layer_is_the_optimal_low_rank_approximation(shape):
    from spaces.tucker import _svd_linear

    torch.manual_seed(0)
    fc = nn.Linear(shape[1], shape[0])
    r = 5
    low = _svd_linear(fc, r, structure_only=False)
    approx = (low[1].weight @ low[0].weight).detach()
    s = torch.linalg.svdvals(fc.weight.detach().double())
    optimum = s[r:].pow(2).sum().sqrt()  # Eckart-Young: the best rank-r error
    error = torch.linalg.matrix_norm((fc.weight.detach() - approx).double())
    assert error == pytest.approx(float(optimum), rel=1e-3)
    torch.testing.assert_close(low[1].bias.detach(), fc.bias.detach())


def test_ranks_round_to_multiples_and_old_plans_keep_exact_ranks(resnet18, ctx):
    from spaces.tucker import rank_of as _rank

    assert [_rank(f, 64, 8) for f in (0.01, 0.3, 0.55, 1.0)] == [8, 16, 32, 64]
    assert _rank(0.3, 6, 8) == 6  # never above the channels
    space = get_space("decompose.tucker")
    assert space.suggest(_Mid(), resnet18, ctx)["round_to"] == 8
    layer = "layer2.0.conv2"  # 128 channels
    rounded = space.transform(resnet18, {"conv": {layer: [0.3, 0.3]}, "round_to": 8}, ctx, structure_only=True)
    exact = space.transform(resnet18, {"conv": {layer: [0.3, 0.3]}}, ctx, structure_only=True)
    assert rounded.record["ranks"][layer] == [40, 40]  # round(38.4) = 38 -> 40
    assert exact.record["ranks"][layer] == [38, 38]
    assert space.scale({"conv": {layer: [0.5, 0.5]}, "round_to": 8}, 2.0)["round_to"] == 8
    with pytest.raises(SpaceError, match="round_to must be a positive integer"):
        space.transform(resnet18, {"conv": {layer: [0.5, 0.5]}, "round_to": 0}, ctx)
    with pytest.raises(SpaceError, match="round_to must be a positive integer"):
        get_space("decompose.tucker", round_to=2.5)


class _Mid:
    def suggest_float(self, name, low, high, *, step=None, log=False):
        return 0.5


@pytest.mark.parametrize("ranks, form", [((8, 16), "out"), ((24, 8), "in")])
def test_full_rank_mode_is_not_projected_with_tucker1(ranks, form):
    """f = 1 in one mode: two convs (Tucker-1), exact when the other rank is full too."""
    torch.manual_seed(0)
    model, ctx = _Tiny().eval(), _ctx()
    space = get_space("decompose.tucker")
    f = [ranks[0] / 24, ranks[1] / 16]
    done = space.transform(model, {"conv": {"conv": f}, "round_to": 1, "tucker1": True}, ctx)
    seq = done.model.conv
    assert len(seq) == 2 and done.record["ranks"]["conv"] == list(ranks)
    spatial = seq[0] if form == "out" else seq[1]
    assert spatial.kernel_size == (3, 3) and (spatial.stride, spatial.padding, spatial.dilation) == ((2, 2), (2, 2), (2, 2))
    assert seq[1].bias is not None  # the original bias sits on the last conv
    three = space.transform(model, {"conv": {"conv": f}, "round_to": 1}, ctx).model.conv
    assert len(three) == 3  # plans without the key keep Tucker-2
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        err1 = (seq(x) - model.conv(x)).norm()
        err2 = (three(x) - model.conv(x)).norm()
    assert err1 <= err2 * 1.05  # one optimal projection, no worse than HOOI's two
    assert count_params(done.model) < count_params(model)
    # full rank in the other mode too: the projection is exact
    from spaces.tucker import _tucker1

    exact = _tucker1(model.conv, 24 if form == "out" else 16, form, structure_only=False)
    with torch.no_grad():
        torch.testing.assert_close(exact(x), model.conv(x), atol=1e-4, rtol=1e-4)


def test_tucker1_flag_must_be_boolean():
    with pytest.raises(SpaceError, match="tucker1 must be true or false"):
        get_space("decompose.tucker").apply(_Tiny(), {"conv": {"conv": [0.5, 1.0]}, "tucker1": "yes"}, _ctx())
