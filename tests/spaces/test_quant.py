"""Int8 PTQ: alone, after pruning, reload equivalence, bad backends and order."""

from __future__ import annotations

import pytest
import torch

from costs.counting import count_params, serialized_size
from spaces import Context, Plan, SpaceError, Step, build_from_plan, compress, get_space
from spaces.quant import is_quantized
from tests.spaces.conftest import NUM_CLASSES, SIZE

BASE = {"model": "squeezenet1_1", "num_classes": NUM_CLASSES, "image_size": SIZE}


def test_int8_shrinks_size_and_tracks_float_outputs(small, ctx, x):
    q = get_space("quant.int8").apply(small, {"backend": "x86", "per_channel": True}, ctx)
    assert is_quantized(q)
    assert count_params(q) == count_params(small)  # packed weights are still counted
    assert serialized_size(q) < 0.35 * serialized_size(small)
    with torch.no_grad():
        ref, out = small(x), q(x)
    assert out.shape == ref.shape
    assert torch.corrcoef(torch.stack([ref.flatten(), out.flatten()]))[0, 1] > 0.9


def test_prune_then_quant_plan_rebuilds_exactly(small, ctx, x):
    plan = Plan(base=BASE, steps=(
        Step(space="prune.channel", params={"criterion": "l1", "round_to": 8,
                                            "ratios": {"features.3.squeeze": 0.5, "features.4.squeeze": 0.5}}),
        Step(space="quant.int8", params={"backend": "x86", "per_channel": False})))
    model, done = compress(small, plan, ctx)
    assert all(s.record is not None for s in done.steps)
    rebuilt = build_from_plan(Plan.from_json(done.to_json()), model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_unsupported_backend_and_order(small, ctx, monkeypatch):
    space = get_space("quant.int8")
    with pytest.raises(SpaceError, match="unknown backend 'tpu'"):
        space.apply(small, {"backend": "tpu"}, ctx)
    import spaces.quant

    monkeypatch.setattr(spaces.quant, "supported_engines", lambda: ["none", "qnnpack"])
    with pytest.raises(SpaceError, match="backend 'x86' is not supported.*qnnpack"):
        space.apply(small, {"backend": "x86"}, ctx)
    monkeypatch.undo()
    with pytest.raises(SpaceError, match="must be the last step"):
        compress(small, Plan(base=BASE, steps=(Step(space="quant.int8", params={}),
                                               Step(space="prune.magnitude", params={}))), ctx)
    with pytest.raises(SpaceError, match="calibration"):
        space.apply(small, {}, Context(num_classes=NUM_CLASSES, image_size=SIZE))
    with pytest.raises(SpaceError, match="CPU only"):
        space.apply(small, {}, Context(num_classes=NUM_CLASSES, image_size=SIZE, device="cuda"))


def test_replaying_a_record_still_calibrates(small, ctx, x):
    """Regression: a quant step that carries its record (plans from a finished trial) applied to
    real weights must calibrate again; skipping it left default scales and destroyed accuracy."""
    space = get_space("quant.int8")
    first = space.transform(small, {}, ctx)
    again = space.transform(small, {}, ctx, record=first.record)
    with torch.no_grad():
        assert torch.equal(again.model(x), first.model(x))
