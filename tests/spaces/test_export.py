"""Export and reload: plan + state dict (weights_only), TorchScript, and mismatches."""

from __future__ import annotations

import pytest
import torch

from spaces import (Plan, SpaceError, Step, build_from_plan, compress, export_torchscript, load_compressed,
                    save_compressed)
from tests.spaces.conftest import NUM_CLASSES, SIZE

BASE = {"model": "squeezenet1_1", "num_classes": NUM_CLASSES, "image_size": SIZE}


@pytest.mark.parametrize("steps", [
    [("prune.channel", {"criterion": "fpgm", "ratios": {"features.0": 0.5, "features.12.expand3x3": 0.25}})],
    [("decompose.tucker", {"conv": {"features.3.expand3x3": [0.5, 0.5]}}), ("quant.int8", {})],
    [("prune.magnitude", {"sparsity": {"features.0": 0.5}}), ("quant.int8", {"per_channel": False})],
    [("distill.kd", {"student": {"family": "self", "width": 0.5}, "temperature": 3.0, "alpha": 0.5})],
])
def test_save_load_gives_the_same_outputs(steps, small, ctx, x, tmp_path):
    plan = Plan(base=BASE, steps=tuple(Step(space=s, params=p) for s, p in steps))
    model, done = compress(small, plan, ctx)
    path = save_compressed(tmp_path / "m.pt", model, done, extra={"oa": 0.5})
    blob = torch.load(path, weights_only=True)  # plain types only: no pickled classes
    assert Plan.from_json(blob["plan"]) == done
    again, plan2 = load_compressed(path)
    assert plan2 == done
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.eval()(x))
    assert export_torchscript(again, tmp_path / "m.ts", image_size=SIZE) is None
    scripted = torch.jit.load(str(tmp_path / "m.ts"))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), again(x))


def test_weights_that_do_not_fit_the_plan(small, ctx, tmp_path):
    plan = Plan(base=BASE, steps=(Step(space="prune.channel", params={"ratios": {"features.0": 0.5}}),))
    model, done = compress(small, plan, ctx)
    wrong = Plan(base=BASE, steps=(Step(space="prune.channel", params={"ratios": {"features.0": 0.25}}),))
    with pytest.raises(SpaceError, match="shape mismatch"):
        build_from_plan(wrong, model.state_dict())
    other = Plan(base={**BASE, "model": "resnet18"}, steps=done.steps)
    with pytest.raises(SpaceError, match="plan step 0"):
        build_from_plan(other, model.state_dict())
    with pytest.raises(SpaceError, match="not found"):
        load_compressed(tmp_path / "missing.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SpaceError, match="not a compressed model"):
        load_compressed(tmp_path / "other.pt")


def test_step_options_survive_json_and_bad_options_are_named():
    from spaces import check_plan

    step = Step.from_dict({"space": "decompose.tucker", "params": {}, "options": {"round_to": 16}})
    plan = Plan(base=BASE, steps=(step,))
    assert Plan.from_json(plan.to_json()).steps[0].options == {"round_to": 16}
    check_plan(plan)
    bad = Plan(base=BASE, steps=(Step(space="decompose.tucker", options={"nope": 1}),))
    with pytest.raises(SpaceError, match=r"decompose.tucker.*bad options"):
        check_plan(bad)
    with pytest.raises(SpaceError, match="options must be an object"):
        Step.from_dict({"space": "decompose.tucker", "options": [1]})


def test_int8_linear_layers_reload_from_the_plan_file(resnet18, ctx, x, tmp_path):
    """Quantised Linear layers need the state dict's version metadata to unpack their weights."""
    base = {"model": "resnet18", "num_classes": NUM_CLASSES, "image_size": SIZE}
    plan = Plan(base=base, steps=(Step(space="quant.int8", params={}),))
    model, done = compress(resnet18, plan, ctx)
    again, _ = load_compressed(save_compressed(tmp_path / "q.pt", model, done))
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
