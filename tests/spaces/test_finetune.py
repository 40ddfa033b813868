"""Fine-tuning after compression: BN recalibration, sparsity kept, KD, whole plans."""

from __future__ import annotations

import pytest
import torch

from spaces import Plan, SpaceError, Step, finetune_plan, get_space, recalibrate_bn
from spaces.finetune import finetune
from spaces.quant import is_quantized
from tests.spaces.conftest import NUM_CLASSES, SIZE, batches

BASE = {"model": "squeezenet1_1", "num_classes": NUM_CLASSES, "image_size": SIZE}


def test_recalibrate_bn_replaces_running_stats(ctx):
    from tests.spaces.conftest import make

    model = make("mobilenet_v3_small")
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    momentum = bn.momentum
    assert torch.all(bn.running_mean == 0)
    recalibrate_bn(model, batches(3), max_batches=2)
    assert not torch.all(bn.running_mean == 0)
    assert bn.momentum == momentum and not model.training


def test_finetune_keeps_magnitude_zeros_and_distils(small, ctx):
    layers = {"features.0": 0.7, "features.3.expand3x3": 0.7}
    pruned = get_space("prune.magnitude").apply(small, {"sparsity": layers}, ctx)
    nnz = {n: int((pruned.get_submodule(n).weight != 0).sum()) for n in layers}
    hist = finetune(pruned, batches(2), epochs=1, lr=0.01, teacher=small, temperature=3.0, alpha=0.5)
    assert len(hist) == 1
    assert {n: int((pruned.get_submodule(n).weight != 0).sum()) for n in layers} == nnz  # zeros stay zero
    assert not any("weight_orig" in k for k in pruned.state_dict())
    w = pruned.get_submodule("features.0").weight
    assert float((w == 0).float().mean()) >= 0.69


def test_finetune_plan_prunes_trains_then_quantises(small):
    plan = Plan(base=BASE, steps=(
        Step(space="distill.kd", params={"student": {"family": "self", "width": 0.5}, "temperature": 2.0,
                                         "alpha": 0.5}),
        Step(space="quant.int8", params={})))
    model, done, hist = finetune_plan(small, plan, batches(2), epochs=1, bn_batches=2)
    assert len(hist) == 1 and is_quantized(model)
    assert [s.space for s in done.steps] == ["distill.kd", "quant.int8"]
    assert all(s.record is not None for s in done.steps)
    with torch.no_grad():
        assert model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, NUM_CLASSES)


def test_quantised_models_are_not_finetuned(small, ctx):
    q = get_space("quant.int8").apply(small, {}, ctx)
    with pytest.raises(SpaceError, match="fine-tune before"):
        finetune(q, batches(1), epochs=1)


def test_finetune_takes_a_ready_loss_reports_epochs_and_keeps_any_zero_when_asked(small, ctx):
    from spaces.distill import kd_loss

    layers = {"features.0": 0.02}  # below the default min_sparsity of 5%
    pruned = get_space("prune.magnitude").apply(small, {"sparsity": layers}, ctx)
    zeros = int((pruned.get_submodule("features.0").weight == 0).sum())
    assert zeros > 0
    records = []
    loss = kd_loss(small, temperature=2.0, alpha=0.5, label_smoothing=0.1)
    finetune(pruned, batches(3), epochs=2, lr=0.01, loss_fn=loss, min_sparsity=0.0, on_epoch=records.append)
    assert [r["epoch"] for r in records] == [1, 2]
    assert int((pruned.get_submodule("features.0").weight == 0).sum()) >= zeros
    with pytest.raises(SpaceError, match="either a teacher or a loss_fn"):
        finetune(pruned, batches(1), epochs=1, teacher=small, loss_fn=loss)


def test_kd_label_smoothing_changes_only_the_hard_label_term(small):
    from spaces.distill import kd_loss

    x, y = batches(1)[0]
    logits = torch.randn(len(y), NUM_CLASSES)
    plain = kd_loss(small, temperature=2.0, alpha=0.0)(logits, y, x)
    smooth = kd_loss(small, temperature=2.0, alpha=0.0, label_smoothing=0.1)(logits, y, x)
    expected = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    torch.testing.assert_close(smooth, expected)
    assert not torch.isclose(plain, smooth)


def test_finetune_reestimates_bn_after_every_epoch_before_it_is_validated():
    """With bn_batches, each epoch ends on statistics of its final weights (what recalibrate_bn gives)."""
    import copy

    from rsc.loop import fit
    from tests.spaces.conftest import make

    small = make("mobilenet_v3_small")  # has BatchNorm (the squeezenet fixture has none)

    calls = []
    model = copy.deepcopy(small)
    fit(model, batches(2), epochs=2, lr=0.01, progress=False, end_of_epoch=lambda m: calls.append(m.training),
        on_epoch=lambda r: calls.append(r["epoch"]))
    assert calls == [True, 1, True, 2]  # the hook runs after the epoch's steps, before its record

    held = batches(2, seed=7)
    plain, recal = copy.deepcopy(small), copy.deepcopy(small)
    finetune(plain, batches(2), epochs=1, lr=0.01)
    finetune(recal, batches(2), epochs=1, lr=0.01, bn_batches=held)
    bn = lambda m: [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    assert bn(recal)
    check = copy.deepcopy(recal)
    recalibrate_bn(check, held, max_batches=len(held))
    for a, b in zip(bn(recal), bn(check)):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
    # the same weights (same seed, same steps), different statistics
    for a, b in zip(plain.parameters(), recal.parameters()):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a.running_mean, b.running_mean) for a, b in zip(bn(plain), bn(recal)))
