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
