"""--allocate energy: an energy-budgeted search whose pruning cuts are allocated by the analytical energy model."""

from __future__ import annotations

import pytest

from tests.search.conftest import tiny_config


@pytest.mark.timeout(600)
def test_an_energy_budgeted_search_allocates_by_energy_and_every_model_meets_the_budget(tmp_path):
    import optuna

    from search.run import run

    config = tiny_config(tmp_path, methods=("prune",), allocate="energy", budgets=("energy<50%",),
                         objectives=("accuracy", "energy"), trials=2)
    result = run(config)
    assert result.counts["complete"] == 2 and result.counts["inside_budget"] == 2
    study = optuna.load_study(study_name=config.study_name, storage=config.storage_url)
    limit = 0.5 * result.base["energy_mj"]
    for t in study.trials:
        step = t.user_attrs["plan"]["steps"][0]
        assert step["space"] == "prune.allocated" and step["record"]["cost"] == "energy"
        assert t.user_attrs["costs"]["energy_mj"] <= limit * 1.0001
    assert result.final and all(r["energy_mj"] <= limit * 1.0001 and r["meets_budget"] for r in result.final)


@pytest.mark.timeout(600)
def test_a_params_budget_allocated_by_measured_sensitivity(tmp_path):
    """--allocate params --allocate-damage sensitivity: the cuts follow each group's measured loss rise,
    the plan records it, and every trial lands inside the params budget."""
    import optuna

    from search.run import run

    config = tiny_config(tmp_path, methods=("prune",), allocate="params", allocate_damage="sensitivity",
                         budgets=("params<30%",), trials=2)
    assert config.space_methods() == (("prune-alloc",), {"prune-alloc": {"cost": "params", "damage": "sensitivity"}})
    result = run(config)
    assert result.counts["complete"] == 2 and result.counts["inside_budget"] == 2
    study = optuna.load_study(study_name=config.study_name, storage=config.storage_url)
    for t in study.trials:
        step = t.user_attrs["plan"]["steps"][0]
        assert step["options"] == {"cost": "params", "damage": "sensitivity"} and step["record"]["cost"] == "params"
        assert t.user_attrs["costs"]["params"] <= 0.3 * result.base["params"] * 1.0001
