"""Knowledge distillation: student space and Hinton's loss."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from costs.counting import count_params
from spaces import SpaceError, get_space
from spaces.distill import kd_loss
from tests.spaces.conftest import NUM_CLASSES


def _p(family, width=1.0, depth=1.0, temperature=4.0, alpha=0.5):
    return {"student": {"family": family, "width": width, "depth": depth},
            "temperature": temperature, "alpha": alpha}


def test_self_student_is_the_teacher_thinned_with_its_weights(small, ctx, x):
    done = get_space("distill.kd").transform(small, _p("self", width=0.5), ctx)
    assert count_params(done.model) < 0.4 * count_params(small)
    assert done.record["history"]
    with torch.no_grad():
        assert done.model(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("family, width, depth", [("mobilenet_v2", 0.5, 0.5), ("resnet18", 0.5, 0.5),
                                                   ("mobilenet_v3_small", 0.75, 1.0)])
def test_family_students_shrink_with_width_and_depth(family, width, depth, small, ctx, x):
    space = get_space("distill.kd")
    full = space.apply(small, _p(family), ctx)
    thin = space.apply(small, _p(family, width, depth), ctx)
    assert count_params(thin) < count_params(full)
    with torch.no_grad():
        assert thin(x).shape == (2, NUM_CLASSES)


def test_kd_loss_limits():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    logits = torch.randn(4, 3)
    assert torch.allclose(kd_loss(teacher, temperature=4.0, alpha=0.0)(logits, y, x), F.cross_entropy(logits, y))
    # a student equal to the teacher has zero soft loss
    assert kd_loss(teacher, temperature=2.0, alpha=1.0)(teacher(x), y, x).abs() < 1e-6


@pytest.mark.parametrize("params, match", [
    (_p("self", width=0.0), "width"),
    (_p("self", width=1.5), "width"),
    (_p("vgg99"), "unknown student family"),
    (_p("squeezenet1_1", depth=0.5), "no depth multiplier"),
    (_p("self", temperature=0), "temperature"),
    (_p("self", alpha=1.5), "alpha"),
])
def test_bad_student_params(params, match, small, ctx):
    with pytest.raises(SpaceError, match=match):
        get_space("distill.kd").apply(small, params, ctx)
