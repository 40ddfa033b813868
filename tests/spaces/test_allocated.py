"""prune.allocated / decompose.allocated: one searched kept fraction, per-layer choices allocated by a layer
cost, scaled by the projection, replayed from the record without the cost."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from costs.counting import count_macs
from spaces import Plan, SpaceError, Step, build_from_plan, compress, cost_gap, get_space, project_plan
from spaces import allocation as A
from tests.spaces.conftest import NUM_CLASSES, SIZE

ARCH = {"model": "resnet18", "num_classes": NUM_CLASSES, "image_size": SIZE}


class _Table:
    """A latency table stand-in: convs on 2x2 inputs (layer3 at 32 px) cost 100x per MAC."""

    def layer_cost(self, module, input_shape):
        return A.macs_cost(module, input_shape) * (100.0 if input_shape[-1] == 2 and len(input_shape) == 4 else 1.0)


@pytest.mark.parametrize("name", ["prune.allocated", "decompose.allocated"])
def test_suggest_and_trial_params_are_inverse(resnet18, ctx, name):
    space = get_space(name)
    params = space.suggest(optuna.trial.FixedTrial({f"{name}/keep": 0.35}), resnet18, ctx)
    assert params["keep"] == 0.35
    assert space.suggest(optuna.trial.FixedTrial(space.trial_params(params, resnet18, ctx)), resnet18, ctx) == params


def test_allocated_pruning_meets_its_keep_and_replays_from_the_record(resnet18, ctx, x):
    space = get_space("prune.allocated", cost="macs")
    done = space.transform(resnet18, {"criterion": "l1", "round_to": 8, "keep": 0.4}, ctx)
    macs = count_macs(done.model, image_size=SIZE) / count_macs(resnet18, image_size=SIZE)
    assert macs <= 0.4 + 1e-9 and macs == pytest.approx(done.record["predicted_fraction"], abs=1e-6)
    assert done.record["cost"] == "macs" and set(done.record["params"]["ratios"])
    plan = Plan(base=ARCH, steps=(Step(space="prune.allocated", params={"criterion": "l1", "round_to": 8, "keep": 0.4},
                                       options={"cost": "macs"}, record=done.record),))
    with torch.no_grad():
        torch.testing.assert_close(build_from_plan(plan, done.model.state_dict()).eval()(x), done.model.eval()(x))


def test_allocated_tucker_meets_its_keep(resnet18, ctx):
    space = get_space("decompose.allocated")
    done = space.transform(resnet18, {"keep": 0.4}, ctx)
    assert done.record["predicted_fraction"] <= 0.4 + 1e-9
    assert done.record["inner"]["ranks"]
    assert count_macs(done.model, image_size=SIZE) < 0.6 * count_macs(resnet18, image_size=SIZE)


def test_scale_moves_keep_and_saturates_at_the_strongest(resnet18, ctx):
    space = get_space("prune.allocated")
    p = {"criterion": "l1", "round_to": 8, "keep": 0.6}
    assert space.scale(p, 2.0)["keep"] == pytest.approx(0.2)
    assert space.scale(p, 0.5)["keep"] == pytest.approx(0.8)
    assert space.scale(p, 0.0)["keep"] == 1.0 and space.scale(p, 1e6)["keep"] == 0.0
    strongest = space.transform(resnet18, space.scale(p, 1e6), ctx)  # below the floor: every group at max_ratio
    assert 0 < strongest.record["predicted_fraction"] < 0.2
    assert space.transform(resnet18, space.scale(p, 0.0), ctx).record["predicted_fraction"] == 1.0


def test_projection_lands_an_allocated_plan_on_a_macs_budget(resnet18, ctx):
    base_macs = count_macs(resnet18, image_size=SIZE)
    plan = Plan(base=ARCH, steps=(Step(space="prune.allocated", params={"criterion": "l1", "round_to": 8, "keep": 0.9}),))
    projected, factor = project_plan(resnet18, plan, ctx, cost_gap({"macs": 0.3 * base_macs}, SIZE), tolerance=0.03)
    assert factor > 1
    model, _ = compress(resnet18, projected, ctx)
    assert 0.25 * base_macs <= count_macs(model, image_size=SIZE) <= 0.3 * base_macs


def test_latency_allocation_reads_the_context_table(resnet18, ctx):
    space = get_space("prune.allocated", cost="latency")
    with pytest.raises(SpaceError, match="needs a latency table"):
        space.transform(resnet18, {"keep": 0.5}, ctx)
    with_table = dataclasses.replace(ctx, latency_table=_Table())
    by_latency = space.transform(resnet18, {"keep": 0.7}, with_table).record["choices"]
    by_macs = get_space("prune.allocated").transform(resnet18, {"keep": 0.7}, ctx).record["choices"]
    layer3 = [k for k in by_latency if k.startswith("layer3")]
    assert sum(by_latency[k] for k in layer3) < sum(by_macs[k] for k in layer3)


@pytest.mark.parametrize("params, match", [
    ({}, "params need 'keep'"),
    ({"keep": 1.5}, r"keep must be a number in \[0, 1\]"),
    ({"keep": 0.5, "ratios": {}}, "ratios"),
])
def test_bad_params_are_refused(resnet18, ctx, params, match):
    with pytest.raises(SpaceError, match=match):
        get_space("prune.allocated").transform(resnet18, params, ctx)


def test_bad_options_and_records_are_refused(resnet18, ctx):
    with pytest.raises(SpaceError, match="unknown cost 'joules'"):
        get_space("prune.allocated", cost="joules")
    with pytest.raises(SpaceError, match="min_keep"):
        get_space("decompose.allocated", min_keep=0.99)
    with pytest.raises(SpaceError, match="no allocated params to replay"):
        get_space("prune.allocated").transform(resnet18, {"keep": 0.5}, ctx, record={"history": []})
