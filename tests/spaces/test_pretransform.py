"""Spaces trained before their transform: soft filter pruning (``prune.sfp``) and Network Slimming
(``prune.slimming``) through :func:`spaces.finetune_plan`, the one path every plan takes.

The reference is the study's own hand-written SFP and slimming, as they ran before they became spaces
(``search/study/execute.py`` at 6bb501c): the same seed gives the same weights.
"""

from __future__ import annotations

import copy

import pytest
import torch

from spaces import Plan, Step, compress, get_space, recalibrate_bn
from spaces.finetune import StopFinetune, finetune, finetune_plan
from tests.spaces.conftest import NUM_CLASSES, SIZE, batches, make

BASE = {"model": "resnet18", "num_classes": NUM_CLASSES, "image_size": SIZE}


@pytest.fixture(scope="module")
def resnet():
    return make("resnet18")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def _study_sfp(base, params, ctx, loader, bn, epochs, seed):
    """The study's SFP before it was a space: soft-prune, fit with soft_prune + BN re-estimation after every
    epoch, then prune.channel with l1 at the same ratios."""
    from rsc.loop import fit
    from spaces.prune import soft_prune

    model = copy.deepcopy(base)

    def end_of_epoch(m):
        soft_prune(m, params, ctx)
        recalibrate_bn(m, bn, max_batches=len(bn))

    soft_prune(model, params, ctx)
    fit(model, loader, epochs=epochs, lr=0.01, seed=seed, progress=False, end_of_epoch=end_of_epoch)
    return compress(model.eval(), Plan(base=BASE, steps=(Step(space="prune.channel", params=params),)), ctx)[0]


def _study_slimming(base, params, ctx, loader, bn, epochs, seed, reg):
    """The study's Network Slimming before it was a space: half the epochs with L1 on BN scales, prune by BN
    scale, fine-tune the rest without keeping zeros."""
    import torch_pruning as tp

    from rsc.loop import fit

    model = copy.deepcopy(base)
    pruner = tp.pruner.BNScalePruner(model, ctx.example_input(1), importance=tp.importance.BNScaleImportance(),
                                     reg=reg)
    fit(model, loader, epochs=epochs // 2, lr=0.01, seed=seed, progress=False,
        after_backward=lambda m: pruner.regularize(m))
    pruned, _ = compress(model, Plan(base=BASE, steps=(Step(space="prune.channel", params=params),)), ctx)
    finetune(pruned, loader, epochs=epochs - epochs // 2, lr=0.01, seed=seed, bn_batches=bn, keep_sparsity=False)
    return pruned


def test_sfp_through_finetune_plan_is_the_studys_sfp(resnet, ctx):
    loader, bn = batches(3, seed=1), batches(2, seed=2)
    space = get_space("prune.sfp")
    params = space.uniform_params(resnet, ctx, criterion="l1", ratio=0.3)
    seen = []
    model, done, history = finetune_plan(resnet, Plan(base=BASE, steps=(Step(space="prune.sfp", params=params),)),
                                         loader, epochs=2, lr=0.01, context=ctx, bn_batches=bn, seed=3,
                                         on_epoch=lambda r: seen.append(r["epoch"]), on_compressed=seen.append)
    assert [h["epoch"] for h in history] == [1, 2] and seen[:2] == [1, 2]  # all epochs before the removal
    assert isinstance(seen[2], torch.nn.Module) and len(seen) == 3          # compressed once, at the end
    assert done.steps[0].space == "prune.sfp" and done.steps[0].record["history"]
    reference = _study_sfp(resnet, params, ctx, loader, bn, epochs=2, seed=3)
    for m in (model, reference):
        recalibrate_bn(m, bn, max_batches=len(bn))
    _same_weights(model, reference)
    # the plan replays on a fresh model: same structure
    from spaces import build_from_plan

    rebuilt = build_from_plan(done, model.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 3, SIZE, SIZE)
        torch.testing.assert_close(rebuilt(x), model.eval()(x))


def test_slimming_through_finetune_plan_is_the_studys_slimming(resnet, ctx):
    loader, bn = batches(3, seed=1), batches(2, seed=2)
    params = get_space("prune.slimming").uniform_params(resnet, ctx, criterion="bn_scale", ratio=0.3)
    plan = Plan(base=BASE, steps=(Step(space="prune.slimming", params=params, options={"reg": 1e-3}),))
    model, done, history = finetune_plan(resnet, plan, loader, epochs=3, lr=0.01, context=ctx, bn_batches=bn, seed=3)
    assert [h["epoch"] for h in history] == [1, 2, 3]  # 1 sparsity epoch (3 // 2), then 2 of the pruned model
    reference = _study_slimming(resnet, params, ctx, loader, bn, epochs=3, seed=3, reg=1e-3)
    for m in (model, reference):
        recalibrate_bn(m, bn, max_batches=len(bn))
    _same_weights(model, reference)
    assert done.steps[0].options == {"reg": 1e-3}


def test_the_sparsity_phase_shrinks_the_bn_scales(resnet, ctx):
    loader = batches(3, seed=1)

    def scales(reg):
        space = get_space("prune.slimming", reg=reg)
        model = copy.deepcopy(resnet)
        hooks = space.training_hooks(model, {}, ctx)
        finetune(model, loader, epochs=2, lr=0.01, seed=0, keep_sparsity=False, hooks=hooks)
        return sum(float(m.weight.detach().abs().sum()) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    assert scales(0.05) < scales(0.0)


def test_no_epochs_still_transforms_and_a_stop_before_the_transform_carries_the_plan(resnet, ctx):
    params = get_space("prune.sfp").uniform_params(resnet, ctx, criterion="l1", ratio=0.5)
    plan = Plan(base=BASE, steps=(Step(space="prune.sfp", params=params),))
    model, done, history = finetune_plan(resnet, plan, batches(1), epochs=0, context=ctx, bn_batches=1)
    direct, _ = compress(resnet, Plan(base=BASE, steps=(Step(space="prune.channel", params=params),)), ctx)
    assert history == [] and sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in direct.parameters())

    def stop(record):
        raise StopFinetune

    with pytest.raises(StopFinetune) as info:
        finetune_plan(resnet, plan, batches(1), epochs=2, context=ctx, bn_batches=1, on_epoch=stop)
    assert [s.space for s in info.value.plan.steps] == ["prune.sfp"] and info.value.plan.steps[0].record is None


def test_the_criteria_are_fixed(resnet, ctx):
    from spaces.errors import SpaceError

    params = get_space("prune.sfp").uniform_params(resnet, ctx, criterion="fpgm")
    with pytest.raises(SpaceError, match="the criterion is l1"):
        get_space("prune.sfp").transform(resnet, params, ctx)
    with pytest.raises(SpaceError, match="the criterion is bn_scale"):
        get_space("prune.slimming").transform(resnet, params, ctx)
    assert get_space("prune.sfp", bins=4).criteria == ("l1",) and get_space("prune.slimming").criteria == ("bn_scale",)


def test_every_preset_starts_a_plan_its_space_builds_and_the_projection_strengthens(ctx):
    """Presets are read by the study as its methods: each start builds, and scaling it up compresses more."""
    from costs.registry import CostSettings, measure
    from spaces.registry import list_spaces, space_class

    model = make("resnet18")
    names = []
    for name in list_spaces():
        for preset in space_class(name).presets:
            names.append(preset.name)
            space = get_space(name, **preset.options)
            params = preset.start(space, model, ctx)
            built = space.transform(model, params, ctx).model
            cost = space_class(name).rate_cost
            before = measure(model, [cost], CostSettings(image_size=SIZE))[cost]
            after = measure(built, [cost], CostSettings(image_size=SIZE))[cost]
            stronger = measure(space.transform(model, space.scale(params, 4.0), ctx).model, [cost],
                               CostSettings(image_size=SIZE))[cost]
            assert after <= before and (stronger < before if not preset.fixed_rate else after < before), preset.name
            assert preset.family in ("weight", "local", "global", "pruning")
    assert len(names) == len(set(names))


def test_search_run_searches_sfp_and_slimming(tmp_path):
    """The two are spaces like the others: ``search.run --methods sfp,slimming`` searches, projects and
    fine-tunes them (their training before the transform within each trial's fidelity epochs)."""
    from search.run import run
    from tests.search.conftest import tiny_config

    config = tiny_config(tmp_path, methods=("sfp", "slimming"), max_combo=1, budgets=("params<60%",),
                         objectives=("accuracy", "params"), trials=2, fidelity_epochs=2, final_max=1)
    result = run(config)
    assert result.counts["complete"] == 2
    assert {t["method"] for t in result.trials} <= {"sfp", "slimming"}
    limit = 0.6 * result.base_costs["params"]
    assert all(t["costs"]["params"] <= limit for t in result.trials)
    assert result.final and result.final[0]["test_oa"] is not None
