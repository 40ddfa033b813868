"""The joint space: combinations by stage, and a static parameter set so samplers can learn."""

from __future__ import annotations

import optuna
import pytest
import torch

from rsc.models import create_model
from search.space import JointSpace
from spaces import Context, SpaceError


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
        assert [s["space"] for s in steps] == [joint.methods[m].space_name for m in combo.split("+")]
        study.tell(trial, [0.5, 1.0])
    assert len(combos) > 1
    keys = [set(t.params) for t in study.trials]
    assert all(k == keys[0] for k in keys)  # the intersection search space is the whole space
    assert any(k.startswith("prune.channel/") for k in keys[0])
    assert any(k.startswith("decompose.tucker/") for k in keys[0])
    space = optuna.search_space.IntersectionSearchSpace().calculate(study)
    assert set(space) == keys[0]
