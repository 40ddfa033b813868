"""One contract, checked for every registered space (a new space is tested without new tests).

The base is SqueezeNet 1.1 at 32 px: small (0.7 M params) yet it has prunable groups, 3x3
convs for Tucker, a conv head and FX-traceable blocks.
"""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from optuna.trial import FixedTrial

from spaces import Plan, Step, build_from_plan, get_space, list_spaces
from spaces.errors import SpaceError
from tests.spaces.conftest import NUM_CLASSES, SIZE

optuna.logging.set_verbosity(optuna.logging.WARNING)
BASE = {"model": "squeezenet1_1", "num_classes": NUM_CLASSES, "image_size": SIZE}


def test_builtin_spaces_registered():
    assert {"prune.channel", "prune.magnitude", "decompose.tucker", "distill.kd", "quant.int8"} <= set(list_spaces())


@pytest.mark.parametrize("name", list_spaces())
def test_space_contract(name, small, ctx, x):
    space = get_space(name)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    params = space.suggest(trial, small, ctx)
    json.dumps(params, allow_nan=False)  # params are plain JSON

    # suggest is a pure function of the trial values, and trial_params is its inverse
    assert space.suggest(FixedTrial(trial.params), small, ctx) == params
    assert space.suggest(FixedTrial(space.trial_params(params, small, ctx)), small, ctx) == params
    assert space.scale(params, 1.0) == params

    done = space.transform(small, params, ctx)
    json.dumps(done.record, allow_nan=False)
    assert done.model is not small
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items()), "input was mutated"
    with torch.no_grad():
        out = done.model.eval()(x)
    assert out.shape == (2, NUM_CLASSES)

    # base architecture + plan (through JSON) + state dict rebuilds the same model
    plan = Plan.from_json(Plan(base=BASE, steps=(Step(space=name, params=params, record=done.record),)).to_json())
    rebuilt = build_from_plan(plan, done.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), out)


@pytest.mark.parametrize("name", list_spaces())
def test_scale_zero_is_weakest_and_stays_valid(name, small, ctx):
    space = get_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = space.suggest(study.ask(), small, ctx)
    for factor in (0.0, 0.5, 2.0, 100.0):
        scaled = space.scale(params, factor)
        json.dumps(scaled)
        space.transform(small, scaled, ctx, structure_only=True)  # still valid params
    with pytest.raises(Exception, match="factor"):
        space.scale(params, -1.0)


@pytest.mark.parametrize("name", ["prune.channel", "prune.magnitude", "decompose.tucker"])
def test_depth_bins_contract(name, resnet18, ctx):
    """One value per contiguous depth bin: suggest/trial_params stay inverse; mixed bins are refused."""
    space = get_space(name, bins=4)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5)).ask()
    params = space.suggest(trial, resnet18, ctx)
    keys = [k for k in trial.params if "/bin" in k]
    assert keys and all(k.rsplit("/", 1)[1] in {"bin0", "bin1", "bin2", "bin3"} for k in keys)
    assert space.suggest(FixedTrial(space.trial_params(params, resnet18, ctx)), resnet18, ctx) == params
    per_layer = get_space(name).suggest(
        optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5)).ask(), resnet18, ctx)
    with pytest.raises(SpaceError, match="depth bin"):
        space.trial_params(per_layer, resnet18, ctx)  # different values inside one bin
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(SpaceError, match="bins must be a positive integer"):
            get_space(name, bins=bad)


def test_depth_bins_follow_module_order_and_cut_evenly(resnet18):
    from spaces.layers import depth_bins

    names = ["layer4.0.downsample.0", "conv1", "layer2.0.conv1", "layer1.0.conv1", "layer3.0.conv1"]
    assert depth_bins(resnet18, names, 2) == [["conv1", "layer1.0.conv1"],
                                              ["layer2.0.conv1", "layer3.0.conv1", "layer4.0.downsample.0"]]
    assert depth_bins(resnet18, names[:2], 4) == [["conv1"], ["layer4.0.downsample.0"]]  # never empty bins
