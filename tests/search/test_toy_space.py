"""A toy space, defined and registered in this file alone, searched by ``search.run`` and compared by
``search.study``, with no file under ``search/`` edited.

The search reads a space's capabilities (here: zeros to keep, a rate on non-zero params); the study's
methods are every registered space's presets plus its own baselines, so the toy's preset ``toy`` is a
study method while the space is registered, and is gone when it is not.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from spaces.base import Preset, Space, Transformed
from spaces.registry import register_space, unregister_space
from tests.search.conftest import tiny_config

NAME = "toy.width"


class ToyMagnitude(Space):
    """Zero the ``fraction`` smallest weights of every convolution: the tensors keep their shapes, so the
    method keeps zeros through fine-tuning and its rate counts non-zero params."""

    aliases = ("toy",)
    keeps_sparsity = True
    rate_cost = "nonzero_params"
    presets = (Preset(name="toy", family="pruning", what="toy: the smallest weights of every convolution zeroed",
                      start=lambda space, model, context: {"fraction": 0.05}),)

    def suggest(self, trial, model, context):
        return {"fraction": trial.suggest_float(self.key("fraction"), 0.05, 0.9, step=0.05)}

    def scale(self, params, factor):
        return {"fraction": round(min(0.95, params["fraction"] * factor), 6)}

    def trial_params(self, params, model, context):
        return {self.key("fraction"): params["fraction"]}

    def transform(self, model, params, context, *, record=None, structure_only=False):
        new = copy.deepcopy(model)
        with torch.no_grad():
            for m in new.modules():
                if isinstance(m, nn.Conv2d):
                    k = int(m.weight.numel() * float(params["fraction"]))
                    if k:
                        cut = m.weight.abs().flatten().kthvalue(k).values
                        m.weight[m.weight.abs() <= cut] = 0.0
        return Transformed(new, None)


@pytest.fixture
def toy():
    register_space(NAME)(ToyMagnitude)
    try:
        yield
    finally:
        unregister_space(NAME)


def test_the_search_searches_a_space_registered_in_a_test_file(tmp_path, toy):
    from search.run import run

    result = run(tiny_config(tmp_path, methods=("toy",), trials=2, final_max=1))
    assert result.counts["complete"] == 2
    limit = 0.6 * result.base_costs["nonzero_params"]
    assert all(t["method"] == "toy" and t["costs"]["nonzero_params"] <= limit for t in result.trials)
    assert result.final[0]["test_oa"] is not None


def test_the_study_compares_a_registered_space_by_its_preset(tmp_path, toy, capsys):
    from search.study.__main__ import main
    from search.study.methods import study_methods

    method = study_methods()["toy"]
    assert (method.kind, method.space, method.family, method.rate_cost) == ("plan", NAME, "pruning", "nonzero_params")
    argv = ["--image-size", "32", "--networks", "resnet18", "--teacher", "none", "--repeats", "1", "--epochs", "1",
            "--finetune-epochs", "1", "--rates", "2", "--experiments", "pruning", "--pruning-methods", "toy",
            "--kd", "off", "--out", str(tmp_path / "runs"), "--name", "toy", "--no-progress"]
    assert main([*argv, "--list-methods"]) == 0 and "toy" in capsys.readouterr().out.split()
    assert main(argv) == 0
    rows = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "runs" / "toy" / "cells").glob("*.json")}
    row = rows["toy-resnet18-r0.8-x2-aug-default-s0"]
    assert row["status"] == "ok" and row["family"] == "pruning"
    # projected onto the rate on non-zero params (the space's rate_cost), the zeros kept through the fine-tune
    assert 2.0 <= row["compression_rate"] == row["compression_rate_nonzero"] <= 2.0 / 0.97 + 0.01
    assert row["params"] == row["base_params"] and row["plan"]["steps"][0]["space"] == NAME
    assert "| toy | pruning | no | 2x |" in (tmp_path / "runs" / "toy" / "tables.md").read_text()


def test_an_unregistered_space_is_no_method(capsys):
    from search.study.__main__ import main
    from search.study.methods import study_methods

    assert "toy" not in study_methods()
    with pytest.raises(SystemExit) as exc:
        main(["--pruning-methods", "toy", "--plan"])
    assert exc.value.code == 2 and "unknown toy" in capsys.readouterr().err
