"""SearchConfig: default study names keep every part of the budget; renamed fields still load from old files."""

from __future__ import annotations

import json

from search.config import SearchConfig


def test_default_study_names_keep_the_budget_operator():
    names = {SearchConfig(budgets=(b,)).study_name for b in ("params<5M", "params>5M", "params<=5M", "params>=5M")}
    assert len(names) == 4
    assert SearchConfig(budgets=("params<5M",)).study_name == "synthetic-resnet18-params-lt-5M-nsga2-s0"
    assert SearchConfig(budgets=("params<=25%", "macs < 50%")).study_name == \
        "synthetic-resnet18-params-le-25%_macs-lt-50%-nsga2-s0"
    assert SearchConfig(study="mine").study_name == "mine"


def test_a_config_file_with_the_old_targets_key_loads_as_aims(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"targets": "sampler", "trials": 3}))
    config = SearchConfig.from_file(path)
    assert (config.aims, config.trials) == ("sampler", 3)
