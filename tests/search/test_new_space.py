"""A sixth compression method, defined in this file alone, searched end to end.

Adding a method is adding one module: a :class:`spaces.Space` subclass with ``@register_space`` and
its capabilities as class attributes. Nothing under ``search/`` names a space, so the search
(the joint space, the projection onto the budget, the fine-tune that keeps zeros at zero, the
final stage, the shipped plan file) works with it unedited.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spaces import Space, Transformed
from tests.conftest import registered_space
from tests.search.conftest import tiny_config

NAME = "toy.zero_filters"


class ZeroFilters(Space):
    """Zero the lowest-L1 output filters of every convolution (a toy soft filter pruning).

    Params ``{"fraction": f}``; the filters stay in the tensors, so the method keeps sparsity
    (fine-tuning must not revive them) and its budget is on non-zero params.
    """

    aliases = ("zerofilters",)
    keeps_sparsity = True

    def suggest(self, trial, model, context):
        return {"fraction": trial.suggest_float(self.key("fraction"), 0.05, 0.5, step=0.05)}

    def scale(self, params, factor):
        return {"fraction": round(min(0.9, params["fraction"] * factor), 6)}

    def trial_params(self, params, model, context):
        return {self.key("fraction"): params["fraction"]}

    def transform(self, model, params, context, *, record=None, structure_only=False):
        new = copy.deepcopy(model)
        with torch.no_grad():
            for m in new.modules():
                if isinstance(m, nn.Conv2d) and m.out_channels > 1:
                    k = int(m.out_channels * float(params["fraction"]))
                    if k:
                        norms = m.weight.abs().flatten(1).sum(1)
                        m.weight[norms.argsort()[:k]] = 0.0
        return Transformed(new, None)


@pytest.fixture
def zero_filters():
    with registered_space(NAME, ZeroFilters):
        yield


def test_a_space_registered_in_a_test_file_is_searched_projected_finetuned_and_shipped(tmp_path, zero_filters):
    from search.run import run
    from spaces import load_compressed

    config = tiny_config(tmp_path, methods=("zerofilters",), trials=3, final_max=1, early_stop_margin=None)
    result = run(config)
    assert result.counts["complete"] == 3
    limit = 0.6 * result.base_costs["nonzero_params"]
    for t in result.trials:  # projected onto the budget by the space's own scale()
        assert t["method"] == "zerofilters" and t["costs"]["nonzero_params"] <= limit
    final = result.final[0]
    assert final["test_oa"] is not None and final["nonzero_params"] <= limit  # zeros kept through the fine-tune
    model, plan = load_compressed(final["file"])
    assert [s.space for s in plan.steps] == [NAME]
    zeroed = sum(int((m.weight.flatten(1).abs().sum(1) == 0).sum()) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert zeroed >= 0.4 * sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
