"""Structured channel pruning on the featured architectures, criteria, rounding and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from costs.counting import count_macs, count_params
from spaces import Plan, SpaceError, Step, build_from_plan, get_space
from spaces.prune import kept_channels, prunable_groups
from tests.spaces.conftest import NUM_CLASSES, SIZE, make


def _uniform(model, ctx, ratio, criterion="l1", round_to=8):
    return {"criterion": criterion, "round_to": round_to,
            "ratios": {g.name: ratio for g in prunable_groups(model, ctx)}}


# vgg11 / resnet50 / alexnet / efficientnet_b0 work too (benchmark), but cost seconds each here.
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "googlenet",
                                  "squeezenet1_1"])
def test_prune_architectures_halves_width_and_replays(arch, ctx, x):
    model = make(arch)
    space = get_space("prune.channel")
    done = space.transform(model, _uniform(model, ctx, 0.5), ctx)
    pruned = done.model.eval()
    assert count_macs(pruned, image_size=SIZE) < 0.45 * count_macs(model, image_size=SIZE)
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (2, NUM_CLASSES)
    plan = Plan(base={"model": arch, "num_classes": NUM_CLASSES, "image_size": SIZE},
                steps=(Step(space="prune.channel", params=_uniform(model, ctx, 0.5), record=done.record),))
    with torch.no_grad():
        torch.testing.assert_close(build_from_plan(plan, pruned.state_dict())(x), out)


def test_prune_keeps_head_and_rounds_channels(resnet18, ctx):
    pruned = get_space("prune.channel").apply(resnet18, _uniform(resnet18, ctx, 0.3), ctx)
    assert pruned.fc.out_features == NUM_CLASSES
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)][1:]  # the stem sees 3 inputs
    assert all(m.out_channels % 8 == 0 for m in convs)
    assert count_params(pruned) < count_params(resnet18)


def _is_slice(new: torch.Tensor, old: torch.Tensor) -> bool:
    """Whether ``new`` is ``old`` at some increasing subset of its input channels (dim 1), bit for bit."""
    i = 0
    for j in range(new.shape[1]):
        while i < old.shape[1] and not torch.equal(old[:, i], new[:, j]):
            i += 1
        if i == old.shape[1]:
            return False
        i += 1
    return True


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "bn_scale", "taylor"])
def test_every_criterion_prunes(criterion, small, ctx, x):
    """Every group loses exactly the asked half, the channels removed are the ones the criterion scores
    lowest (on the unpruned model), and each kept layer is the original's slice at the kept indices."""
    import copy

    from spaces.prune import calibration_grads, dependency_groups, importance_of, trace_dependencies

    model = copy.deepcopy(small)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # torchvision starts SqueezeNet's biases at zero: make them tell channels apart
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    space = get_space("prune.channel", criteria=(criterion,))
    params = _uniform(model, ctx, 0.5, criterion=criterion, round_to=1)
    done = space.transform(model, params, ctx)
    pruned = done.model
    with torch.no_grad():
        assert pruned(x).shape == (2, NUM_CLASSES)
    removed = {name: idx for name, out, idx in done.record["history"] if out}
    groups = prunable_groups(model, ctx)
    assert set(removed) == {g.name for g in groups}
    for grp in groups:
        layer, orig = pruned.get_submodule(grp.name), model.get_submodule(grp.name)
        kept = [i for i in range(grp.channels) if i not in set(removed[grp.name])]
        assert layer.out_channels == len(kept) == kept_channels(grp.channels, 0.5, None) == grp.channels - grp.channels // 2
        assert torch.equal(layer.bias, orig.bias[kept]), grp.name
        assert _is_slice(layer.weight, orig.weight[kept]), grp.name  # its inputs may have shrunk too
    ref = copy.deepcopy(model)  # the criterion's own scores on the unpruned model
    dg = trace_dependencies(ref, ctx.example_input(1))
    if criterion == "taylor":
        calibration_grads(ref, ctx.calibration_batches("taylor"))
    with torch.no_grad():
        for name, group in dependency_groups(ref, dg, ctx):
            score = importance_of(criterion)(group)
            if score is None:  # bn_scale on a model without BatchNorm falls back to l1
                score = importance_of("l1")(group)
            kept = [i for i in range(len(score)) if i not in set(removed[name])]
            assert score[kept].min() >= score[removed[name]].max(), (criterion, name)


def test_criteria_choose_different_channels(small, ctx):
    space = get_space("prune.channel")
    hist = {c: space.transform(small, _uniform(small, ctx, 0.5, criterion=c), ctx).record["history"]
            for c in ("l1", "fpgm", "taylor")}
    assert hist["l1"] != hist["fpgm"] or hist["l1"] != hist["taylor"]


def test_per_layer_ratios_act_only_where_named(resnet18, ctx):
    pruned = get_space("prune.channel").apply(
        resnet18, {"criterion": "l1", "round_to": 1, "ratios": {"layer1.0.conv1": 0.5}}, ctx)
    assert pruned.layer1[0].conv1.out_channels == 32
    assert pruned.layer1[1].conv1.out_channels == 64
    assert pruned.layer4[0].conv1.out_channels == 512


def test_kept_channels_rounding():
    assert kept_channels(64, 0.0, 8) == 64
    assert kept_channels(64, 0.5, 8) == 32
    assert kept_channels(64, 0.45, 8) == 32  # 36 kept -> nearest multiple of 8
    assert kept_channels(20, 0.95, 8) == 8  # never below one multiple
    assert kept_channels(3, 0.9, None) == 1


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half", float("nan")])
def test_bad_ratio_is_rejected_with_its_value(ratio, resnet18, ctx):
    with pytest.raises(SpaceError, match=r"ratio of group 'layer1.0.conv1'.*\[0, 1\)"):
        get_space("prune.channel").apply(
            resnet18, {"criterion": "l1", "ratios": {"layer1.0.conv1": ratio}}, ctx)


def test_bad_layer_criterion_and_missing_calibration(resnet18, ctx):
    space = get_space("prune.channel")
    with pytest.raises(SpaceError, match="'fc'.*eligible"):
        space.apply(resnet18, {"ratios": {"fc": 0.5}}, ctx)  # the head is not prunable
    with pytest.raises(SpaceError, match="'nope'"):
        space.apply(resnet18, {"criterion": "nope", "ratios": {}}, ctx)
    with pytest.raises(SpaceError, match="calibration"):
        space.apply(resnet18, {"criterion": "taylor", "ratios": {"layer1.0.conv1": 0.5}},
                    type(ctx)(num_classes=NUM_CLASSES, image_size=SIZE))
    with pytest.raises(SpaceError, match="unknown params"):
        space.apply(resnet18, {"ratio": 0.5}, ctx)


def test_record_that_does_not_fit_the_model(resnet18, small, ctx):
    space = get_space("prune.channel")
    done = space.transform(resnet18, _uniform(resnet18, ctx, 0.5), ctx)
    with pytest.raises(SpaceError, match="does not name a layer|does not match"):
        space.transform(small, {"ratios": {}}, ctx, record=done.record)


def test_untraceable_model_error_names_the_problem(ctx):
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, NUM_CLASSES)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)).detach())  # the graph is cut: no dependency

    model = Weird()
    with pytest.raises(SpaceError, match="prune.channel"):
        get_space("prune.channel").apply(model, {"ratios": {"conv": 0.5}}, ctx)


def test_soft_pruning_zeroes_exactly_what_pruning_removes(resnet18, ctx, x):
    """Soft filter pruning's zeroing: the zeroed model computes what the hard-pruned one does, the
    zeroed filters stay trainable parameters, and zeroing again at the same ratios changes nothing."""
    import copy

    from spaces.prune import soft_prune

    model = resnet18.eval()
    for m in model.modules():  # non-trivial statistics, so a zeroed channel is zero only by its weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    params = _uniform(model, ctx, 0.5)
    soft = copy.deepcopy(model)
    zeroed = soft_prune(soft, params, ctx)
    assert zeroed > 0 and count_params(soft) == count_params(model)
    snapshot = {k: v.clone() for k, v in soft.state_dict().items()}
    assert soft_prune(soft, params, ctx) == zeroed
    assert all(torch.equal(snapshot[k], v) for k, v in soft.state_dict().items())
    hard = get_space("prune.channel").apply(soft, params, ctx).eval()
    with torch.no_grad():
        assert torch.allclose(soft(x), hard(x), atol=1e-4)
    assert count_params(hard) < 0.3 * count_params(model)
    with pytest.raises(SpaceError, match="soft pruning scores filters by their weights"):
        soft_prune(soft, _uniform(model, ctx, 0.5, criterion="taylor"), ctx)
