"""A model's kernels read from a template of its structure (costs.latency.templates) are exactly the traced
ones: on the search's own candidates of ResNet-18 and MobileNetV2 (pruned, Tucker-2, students, combined),
on blocks whose forward depends on a plain attribute, and where a template cannot follow the graph (traced
every time instead). A latency table predicts through them what it predicts from a trace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from costs.latency.templates import KernelTemplates, structure_key
from costs.latency.kernels import kernels_of
from costs.latency.table import LatencyTable

SIZE = 32


@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2"])
def test_candidates_of_the_search_space_read_from_templates_equal_their_trace(model):
    from rsc.models import create_model
    from search.profile import sample_plans, structural_model
    from search.space import JointSpace
    from spaces.base import Context
    from spaces.errors import SpaceError

    base = create_model(model, 5, image_size=SIZE).eval()
    arch = {"model": model, "num_classes": 5, "image_size": SIZE}
    context = Context(num_classes=5, image_size=SIZE, seed=1)
    joint = JointSpace(["prune", "tucker", "distill"], max_combo=2, bins=4)
    templates = KernelTemplates()
    candidates, spaces = 0, set()
    for plan in sample_plans(joint, base, context, arch, 24, seed=7):
        try:
            built = structural_model(base, plan, context)
        except SpaceError:
            continue
        assert templates.kernels(built, SIZE) == kernels_of(built, SIZE), plan
        candidates += 1
        spaces.add("+".join(s.space for s in plan.steps))
    assert candidates >= 16 and all(any(m in c for c in spaces) for m in ("prune", "tucker", "distill")), spaces
    assert templates.reads > 0 and templates.traces + templates.reads == candidates
    assert templates.traces < candidates  # pruned variants of one structure share a trace


class Skip(nn.Module):
    """A block whose forward adds its input only when ``self.add`` says so (as MobileNetV2's
    ``use_res_connect``): the same modules, another graph."""

    def __init__(self, width: int, add: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.add = add

    def forward(self, x):
        y = self.bn(self.conv(x))
        return torch.relu(y + x) if self.add else torch.relu(y)


def _net(width: int, add: bool = True, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         Skip(width, add), nn.MaxPool2d(2), nn.Conv2d(width, 16, 1), nn.ReLU6(),
                         nn.Flatten(), nn.Linear(16 * (SIZE // 2) ** 2, classes)).eval()


def test_a_narrower_model_of_one_structure_is_read_not_traced():
    templates = KernelTemplates()
    wide, narrow = _net(16), _net(8)
    assert templates.kernels(wide, SIZE) == kernels_of(wide, SIZE)
    assert templates.kernels(narrow, SIZE) == kernels_of(narrow, SIZE)
    assert (templates.traces, templates.reads) == (1, 1)
    dims = [k.dims for k in templates.kernels(narrow, SIZE)]
    assert (8, 8) in dims and (8,) in dims and (16 * (SIZE // 2) ** 2, 3) in dims  # the flattened map's width


def test_a_plain_attribute_that_changes_the_graph_changes_the_structure():
    templates = KernelTemplates()
    with_add, without = _net(8, add=True), _net(8, add=False)
    assert structure_key(with_add, SIZE) != structure_key(without, SIZE)
    assert templates.kernels(with_add, SIZE) == kernels_of(with_add, SIZE)
    assert templates.kernels(without, SIZE) == kernels_of(without, SIZE)
    assert any(k.spec["op"] == "add" for k in kernels_of(with_add, SIZE))
    assert not any(k.spec["op"] == "add" for k in kernels_of(without, SIZE))
    assert structure_key(with_add, 2 * SIZE) != structure_key(with_add, SIZE)


class Concat(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, width, 1), nn.Conv2d(3, width, 1)
        self.bn = nn.BatchNorm2d(2 * width)

    def forward(self, x):
        return torch.relu(torch.cat([self.a(x), self.b(x)], 1) + 1.0)


@pytest.mark.parametrize("make", [lambda w: Concat(w), lambda w: torch.fx.symbolic_trace(_net(w))],
                         ids=["channels-changed-without-a-layer", "graph-module"])
def test_a_graph_a_template_cannot_follow_is_traced_every_time(make):
    templates = KernelTemplates()
    for width in (8, 4, 8):
        model = make(width).eval()
        assert templates.kernels(model, SIZE) == kernels_of(model, SIZE)
    assert templates.reads == 0 and templates.traces == 3


def _work_table(model: nn.Module) -> LatencyTable:
    """A table whose every kernel costs the product of its dims (in microseconds) at the dims seen."""
    exact: dict = {}
    for k in kernels_of(model, SIZE):
        work = 1.0
        for d in k.dims:
            work *= d
        exact.setdefault(k.key, {})["x".join(map(str, k.dims))] = work / 1000
    return LatencyTable(target="cpu", fingerprint={}, model="net", image_size=SIZE, num_classes=3, exact=exact,
                        alpha=1.1, beta=0.3)


def test_a_table_predicts_through_templates_what_it_predicts_from_a_trace():
    wide, narrow = _net(16), _net(8)
    table = _work_table(wide)
    exact = _work_table(narrow).exact
    for key, points in exact.items():
        table.exact.setdefault(key, {}).update(points)
    for model in (wide, narrow, wide):
        traced = table.combine(sum(table.kernel_ms(k) for k in kernels_of(model, SIZE)))
        assert table.predict(model) == pytest.approx(traced, rel=1e-12)
    assert table.structures_traced == 1
    table.clear_caches()
    assert table.structures_traced == 0 and table.predict(narrow) == pytest.approx(
        table.combine(sum(table.kernel_ms(k) for k in kernels_of(narrow, SIZE))), rel=1e-12)


def test_a_kernel_missing_from_the_table_is_measured_from_a_read_kernel(monkeypatch):
    """A read kernel has no module of its own: the table rebuilds it from its spec to measure it."""
    wide, narrow = _net(16), _net(8)
    table = _work_table(wide)
    table.predict(wide)  # the structure's template
    calls = []

    def fake_compare(target, models, image_size, shapes=None, **kw):
        calls.append({name: (type(m).__name__, shapes[name]) for name, m in models.items()})
        return {name: 0.5 for name in models}

    monkeypatch.setattr("costs.latency.table.compare_latency_on", fake_compare)
    value = table.predict(narrow)
    missing = [k for k in kernels_of(narrow, SIZE) if k.key not in table.exact or
               "x".join(map(str, k.dims)) not in table.exact[k.key]]
    assert not missing and table.measured_on_the_fly == len(calls[0]) > 0
    assert table.structures_traced == 1 and value > 0
