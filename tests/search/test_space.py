"""The joint space: combinations by stage, and a static parameter set so samplers can learn."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from rsc.models import create_model
from search.space import JointSpace
from spaces import Context, SpaceError


BASE = {"model": "resnet18", "num_classes": 4, "image_size": 32}


@pytest.fixture(scope="module")
def model():
    return create_model("resnet18", 4, image_size=32).eval()


def test_combinations_follow_the_stages():
    joint = JointSpace(["prune", "tucker", "distill", "quant"], max_combo=2)
    assert "prune+quant" in joint.combos and "tucker+distill" in joint.combos
    assert "prune+tucker" not in joint.combos  # two structural methods: one stage, one method
    with pytest.raises(SpaceError, match="given twice"):
        JointSpace(["prune", "prune"])
    with pytest.raises(SpaceError, match="unknown method 'teleport'"):
        JointSpace(["teleport"])


def test_every_trial_suggests_every_method_so_the_search_space_is_static(model):
    """NSGA-II / multivariate TPE / GP model only the intersection of the trials' parameters."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    joint = JointSpace(["prune", "tucker", "quant"])
    ctx = Context(num_classes=4, image_size=32)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    combos = set()
    for _ in range(8):
        trial = study.ask()
        combo, steps = joint.suggest(trial, model, ctx)
        combos.add(combo)
        assert [s.space for s in steps] == [joint.methods[m].space_name for m in combo.split("+")]
        study.tell(trial, [0.5, 1.0])
    assert len(combos) > 1
    keys = [set(t.params) for t in study.trials]
    assert all(k == keys[0] for k in keys)  # the intersection search space is the whole space
    assert any(k.startswith("prune.channel/") for k in keys[0])
    assert any(k.startswith("decompose.tucker/") for k in keys[0])
    space = optuna.search_space.IntersectionSearchSpace().calculate(study)
    assert set(space) == keys[0]


def test_post_training_steps_run_on_a_cpu_copy_when_the_search_trains_elsewhere(model):
    """A search on CUDA projects prune+quant plans; int8 kernels exist on the CPU only.

    Found on an H200: every quant combination failed there with "int8 kernels run on CPU only".
    The context here names a CUDA device; the model stays on the CPU, so this runs anywhere.
    """
    from spaces import Plan, Step, compress

    ctx = Context(num_classes=4, image_size=32, device="cuda")
    plan = Plan(base=BASE, steps=(Step(space="quant.int8", params={}),))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    built, done = compress(model, plan, ctx, structure_only=True)
    assert built is not model and [s.space for s in done.steps] == ["quant.int8"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched


class _FixedTrial:
    def __init__(self, value):
        self.value = value

    def suggest_float(self, name, low, high, *, log=False):
        assert name == "target" and log and high == 1.0
        return min(max(self.value, low), high)


def test_trial_target_spans_the_ceiling_but_never_goes_below_a_combination_floor():
    from search.aims import trial_target

    floors = {"prune": {"params": 100.0}, "tucker": {"params": 400.0}}
    kw = dict(key="params", ceiling=1000.0, floors=floors, min_target=0.1)
    assert trial_target(_FixedTrial(1.0), "prune", **kw) == 1000.0      # the budget itself
    assert trial_target(_FixedTrial(0.5), "prune", **kw) == 500.0
    assert trial_target(_FixedTrial(0.1), "prune", **kw) == pytest.approx(110.0)   # 1.1 x its floor, not 100
    assert trial_target(_FixedTrial(0.1), "tucker", **kw) == pytest.approx(440.0)  # tucker cannot go lower
    assert trial_target(_FixedTrial(0.1), "unknown", **kw) == 100.0


def test_a_capped_final_stage_keeps_the_cheapest_and_the_most_accurate_models():
    from search.final import spread_pick

    class T:
        def __init__(self, acc):
            self.values = [acc, 0.0]

    front = [T(a) for a in (0.5, 0.6, 0.7, 0.8, 0.9)]  # cheapest first
    acc = [lambda picks: [t.values[0] for t in picks]][0]
    assert acc(spread_pick(front, None)) == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert acc(spread_pick(front, 1)) == [0.9]
    assert acc(spread_pick(front, 2)) == [0.5, 0.9]
    assert acc(spread_pick(front, 3)) == [0.5, 0.7, 0.9]
    assert spread_pick(front, 0) == []
    odd = [T(a) for a in (0.5, 0.95, 0.7, 0.8, 0.9)]  # 3+ objectives: accuracy need not rise with cost
    assert 0.95 in acc(spread_pick(odd, 2))


def test_a_target_deeper_than_the_sample_can_reach_keeps_its_most_compressed_form(model):
    """Layers sampled at ratio 0 stay at 0 under any scaling: such a sample saturates above a deep
    trial target. It then keeps its most compressed form if that meets the hard budget, instead of
    wasting the trial (18% of the benchmark's trials before this)."""
    from spaces import Plan, Step, project_plan
    from spaces.errors import BudgetInfeasible
    from spaces.prune import prunable_groups

    torch.set_num_threads(1)
    ctx = Context(num_classes=4, image_size=32)
    groups = prunable_groups(model, ctx)
    ratios = {g.name: 0.0 for g in groups}
    ratios[groups[-1].name] = 0.1  # one group only
    plan = Plan(base=BASE, steps=(Step(space="prune.channel",
                                       params={"criterion": "l1", "round_to": 8, "ratios": ratios}),))
    never = lambda built: 1.0  # noqa: E731 - a target no plan reaches
    with pytest.raises(BudgetInfeasible):
        project_plan(model, plan, ctx, never)
    out, factor = project_plan(model, plan, ctx, never, fallback=lambda built: -1.0)
    projected = out.steps[0].params["ratios"]
    assert factor > 1 and projected[groups[-1].name] > 0.1
    assert all(v == 0.0 for k, v in projected.items() if k != groups[-1].name)
    with pytest.raises(BudgetInfeasible):  # nor does it meet the hard budget: infeasible after all
        project_plan(model, plan, ctx, never, fallback=never)


def test_int8_never_raises_the_counts_that_projection_probes_skip_it_for(model):
    """Projection leaves int8 out of its probes unless ``size`` is budgeted; that is sound only
    while quantising never raises params, nonzero params or MACs (BN folding lowers params)."""
    from costs.registry import CostSettings, measure
    from spaces import Plan, Step, compress, split_plan
    from spaces.prune import prunable_groups

    torch.set_num_threads(1)
    ctx = Context(num_classes=4, image_size=32)
    ratios = {g.name: 0.5 for g in prunable_groups(model, ctx)}
    plan = Plan(base=BASE, steps=(Step(space="prune.channel", params={"criterion": "l1", "round_to": 8, "ratios": ratios}),
                                  Step(space="quant.int8", params={})))
    keys = ["params", "nonzero_params", "macs"]
    settings = CostSettings(image_size=32)
    float_costs = measure(compress(model, split_plan(plan)[0], ctx, structure_only=True)[0], keys, settings)
    int8_costs = measure(compress(model, plan, ctx, structure_only=True)[0], keys, settings)
    assert all(int8_costs[k] <= float_costs[k] for k in keys)
    assert int8_costs["macs"] == float_costs["macs"]


def test_depth_bins_shrink_the_space_to_one_value_per_stage(model):
    """--depth-bins 4: ResNet-18's 12 channel groups and 16 3x3 convs share one value per stage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = Context(num_classes=4, image_size=32)
    per_layer = JointSpace(["prune", "tucker", "quant"])
    binned = JointSpace(["prune", "tucker", "quant"], bins=4)
    assert binned.space("prune").bins == binned.space("tucker").bins == 4
    assert "bins" not in binned.methods["quant"].options  # a space without the option is left alone
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    t_layer, t_bin = study.ask(), study.ask()
    per_layer.suggest(t_layer, model, ctx)
    binned.suggest(t_bin, model, ctx)
    assert len(t_layer.params) > 40 and len(t_bin.params) == 1 + 1 + 4 + 8 + 1  # combo, criterion, bins, per_channel
    ratios = binned.space("prune").suggest(optuna.trial.FixedTrial(t_bin.params), model, ctx)["ratios"]
    for stage in ("layer2", "layer3", "layer4"):
        assert len({r for n, r in ratios.items() if n.startswith(stage)}) == 1
    assert ratios["conv1"] == ratios["layer1.0.conv1"]  # the stem's group belongs to the first stage
    conv = binned.space("tucker").suggest(optuna.trial.FixedTrial(t_bin.params), model, ctx)["conv"]
    assert len({tuple(v) for n, v in conv.items() if n.startswith("layer4")}) == 1
    # the plan's options carry the bins, so a worker rebuilds the same space
    combo, steps = binned.suggest(study.ask(), model, ctx)
    assert all(s.options.get("bins") == 4 for s in steps if s.space != "quant.int8")


def test_a_binned_stage_is_never_sampled_uncompressed_so_every_sample_reaches_the_budget(model):
    """ResNet-18's last stage holds 3/4 of its weights: a stage sampled at ratio 0 stays at 0 under
    the projection's scaling and no plan could reach params<=25% (measured: 14 of 216 benchmark
    trials infeasible; Tucker ranks sampled at [1, 1] for layer4 made 1 more). Binned ratios start
    one grid step up instead, binned rank fractions stop one step below full rank."""
    from costs.counting import count_params
    from spaces import Plan, Step, project_plan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    ctx = Context(num_classes=4, image_size=32)
    space = JointSpace(["prune"], bins=4).space("prune")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    lows = [min(space.suggest(study.ask(), model, ctx)["ratios"].values()) for _ in range(60)]
    assert min(lows) == pytest.approx(space.step)  # from [0, 0.8], 240 draws would hold a 0
    tucker = JointSpace(["tucker"], bins=4).space("tucker")
    highs = [max(max(v) for v in tucker.suggest(study.ask(), model, ctx)["conv"].values()) for _ in range(60)]
    assert max(highs) == pytest.approx(1.0 - tucker.step)  # a stage at full rank [1, 1] would stay there
    fixed = {"prune.channel/criterion": "l1", **{f"prune.channel/ratio/bin{i}": 0.8 for i in range(3)},
             "prune.channel/ratio/bin3": space.step}  # the last stage barely sampled
    ratios = space.suggest(optuna.trial.FixedTrial(fixed), model, ctx)
    limit = 0.25 * count_params(model)
    plan = Plan(base=BASE, steps=(Step(space="prune.channel", params=ratios, options={"bins": 4}),))
    out, factor = project_plan(model, plan, ctx, lambda built: math.log(count_params(built) / limit))
    assert factor > 1 and out.steps[0].params["ratios"]["layer4.0.conv1"] > space.step
