"""A total compute budget (--compute): read, split between exploring and one finalist, matched by the baseline."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.search.conftest import ROOT, child_env, tiny_config


@pytest.mark.parametrize("text, epochs, seconds", [
    ("120", 120, None), ("120ep", 120, None), ("7.5 epochs", 7.5, None),
    ("900s", None, 900), ("30min", None, 1800), ("2h", None, 7200), ("1.5m", None, 90)])
def test_a_budget_reads_epochs_or_wall_time(text, epochs, seconds):
    from search.spending import ComputeBudget

    b = ComputeBudget.parse(text)
    assert (b.epochs, b.seconds) == (epochs, seconds)


@pytest.mark.parametrize("text", ["", "fast", "-3", "0", "10 parsecs", "5%"])
def test_a_budget_that_is_not_one_is_a_config_error(text):
    from rsc.errors import ConfigError
    from search.spending import ComputeBudget

    with pytest.raises(ConfigError, match="compute budget"):
        ComputeBudget.parse(text)


def test_the_epoch_budget_pays_for_the_trials_of_its_exploring_share(tmp_path):
    from rsc.errors import ConfigError
    from search.spending import plan_config

    c = plan_config(tiny_config(tmp_path, compute="60", fidelity_epochs=2, trials=99, final_max=5,
                                final_pick="spread", final_rungs=3))
    # 20% of 60 epochs = 12 = six candidates of 2 epochs: the uniform one and five searched
    assert (c.trials, c.final_max, c.final_pick, c.final_rungs) == (5, 1, "top", 1)
    assert plan_config(tiny_config(tmp_path, compute="60", fidelity_epochs=2, explore_share=0.5)).trials == 14
    assert plan_config(tiny_config(tmp_path, compute="30min", trials=7)).trials == 7  # the clock stops a wall budget
    assert plan_config(tiny_config(tmp_path)).trials == 3  # no budget: unchanged
    with pytest.raises(ConfigError, match="too small"):
        plan_config(tiny_config(tmp_path, compute="4", fidelity_epochs=2))
    with pytest.raises(ConfigError, match="explore_share"):
        tiny_config(tmp_path, compute="60", explore_share=1.0)


def test_the_finalist_gets_what_is_left():
    from search.compute import Ledger
    from search.spending import ComputeBudget, final_epochs, seconds_per_epoch

    ledger = Ledger()
    ledger.add("trials", epochs=11, seconds=100.0)  # an early stop spent one epoch less
    assert final_epochs(ComputeBudget(epochs=60), ledger) == 49
    assert final_epochs(ComputeBudget(epochs=10), ledger) == 1  # never less than one epoch
    pace = {"seconds": {"finetune": 20.0, "project": 30.0, "total": 55.0}, "epochs_run": 2}
    assert seconds_per_epoch(pace) == (10.0, 5.0)  # the projection is not repeated in the final fine-tune
    assert final_epochs(ComputeBudget(seconds=600), ledger, pace) == 49  # (600 - 100 - 5) / 10
    assert final_epochs(ComputeBudget(seconds=600), ledger, {"seconds": {}, "epochs_run": 0}) == 1


def _budgeted(tmp_path, **changes):
    from search.driver import run
    from search.objective import evaluate_trial

    requests = []

    def recording(request, **kw):
        requests.append(request)
        return evaluate_trial(request, **kw)

    config = tiny_config(tmp_path, methods=("prune",), budgets=("params<50%",), objectives=("accuracy", "params"),
                         fidelity_epochs=1, **{"compute": "8", "baseline": True, **changes})
    return run(config, trial_fn=recording), requests, config


def test_a_budgeted_search_spends_its_budget_and_the_baseline_gets_the_same(tmp_path):
    from search.baseline import SEED_SLOT, UNIFORM_CANDIDATE, record_seed
    from search.request import trial_seed

    result, requests, config = _budgeted(tmp_path)
    compute = result.compute
    # 20% of 8 epochs explores: the uniform candidate and one searched trial of 1 epoch; the finalist gets the rest
    assert compute["epochs"]["trials"] == 2 and compute["epochs"]["final"] == 6 and compute["search_epochs"] == 8
    assert compute["epochs"]["baseline"] == 8 and result.verdict["baseline_epochs"] == 8
    assert len(result.final) == 1 and result.final[0]["epochs"] == 6
    # the uniform configuration was explored like a trial: fidelity epochs, validation only, its own seed
    explored = [r for r in requests if r["seed"] == record_seed(config.seed, UNIFORM_CANDIDATE)]
    assert explored and explored[0]["epochs"] == 1 and not explored[0]["evaluate_test"]
    assert explored[0]["plan"]["steps"][0]["params"]["criterion"] == "l1" and not explored[0]["target"]
    baseline = [r for r in requests if r["seed"] == trial_seed(config.seed, SEED_SLOT)]
    assert len(baseline) == 1 and baseline[0]["epochs"] == 8
    assert any("uniform candidate" in n for n in result.notes)
    # the candidate never entered the engine: Optuna's trials are the searched ones
    assert [t["number"] for t in result.trials] == [0]


def test_the_uniform_candidate_is_a_finalist_when_it_scores_best(tmp_path):
    """A trial function under which every searched plan scores below the uniform one: the finalist is uniform."""
    from search.baseline import UNIFORM_CANDIDATE
    from search.driver import run
    from search.objective import evaluate_trial
    from search.report import render

    def rigged(request, **kw):
        out = evaluate_trial(request, **kw)
        if request["seed"] % 100003 < 100000:  # a searched trial (the uniform candidate's slot is 100001)
            out["val_oa"] = 0.01
        return out

    config = tiny_config(tmp_path, methods=("prune",), budgets=("params<50%",), objectives=("accuracy", "params"),
                         fidelity_epochs=1, compute="8")
    result = run(config, trial_fn=rigged)
    assert result.final[0]["trial"] == UNIFORM_CANDIDATE and result.final[0]["method"] == "uniform l1"
    assert result.chosen["trial"] == UNIFORM_CANDIDATE
    assert result.final[0]["file"].endswith("models/uniform-candidate.pt")
    import io

    out = io.StringIO()
    render(result, out)
    assert "trial uniform uniform l1" in out.getvalue()


def test_a_resumed_budgeted_search_reads_its_uniform_candidate_back(tmp_path):
    from search.baseline import UNIFORM_CANDIDATE, record_seed

    first, requests, config = _budgeted(tmp_path, baseline=False)
    again, requests2, _ = _budgeted(tmp_path, baseline=False, resume=True)
    seed = record_seed(config.seed, UNIFORM_CANDIDATE)
    assert sum(r["seed"] == seed and not r["evaluate_test"] for r in requests2) == 0  # not explored twice
    assert again.compute["epochs"]["trials"] == first.compute["epochs"]["trials"]


def test_a_wall_time_budget_stops_the_trials_at_its_share(tmp_path):
    result, _, config = _budgeted(tmp_path, compute="2s", trials=6, baseline=False)
    # 20% of 2 s is spent by the uniform candidate and the first trial (each takes longer): no more are asked
    assert result.counts["finished"] == 1
    assert len(result.final) == 1 and result.final[0]["epochs"] >= 1


def test_the_command_line_refuses_a_bad_budget_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "search.run", "--compute", "soon", "--out", str(tmp_path)],
                         cwd=ROOT, env=child_env(tmp_path / "cache"), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "compute budget" in res.stderr


def test_a_best_of_k_baseline_shares_its_epochs_and_is_chosen_on_validation(tmp_path):
    from search.baseline import SEED_SLOT
    from search.final import BEST_OF_STRIDE
    from search.request import trial_seed

    result, requests, config = _budgeted(tmp_path, baseline_k=2)
    first = trial_seed(config.seed, SEED_SLOT)
    runs = [r for r in requests if r["seed"] in (first, first + BEST_OF_STRIDE)]
    assert sorted(r["seed"] for r in runs) == [first, first + BEST_OF_STRIDE]
    assert [r["epochs"] for r in runs] == [4, 4]  # two fine-tunes share the budget's 8 epochs
    row = result.baseline
    assert row["best_of"] == 2 and len(row["runs"]) == 2
    assert row["val_oa"] == max(r["val_oa"] for r in row["runs"])  # chosen on validation, never on test
    assert result.compute["epochs"]["baseline"] == 8


def test_the_study_table_says_how_each_budgeted_cell_spent_its_budget():
    from search.study.tables import budget_lines, uniform_lines

    def row(picked, split, final):
        return {"method": "search-alloc", "train_ratio": 0.5, "status": "ok", "target_rate": 10.0, "test_oa": 0.8,
                "compression_rate": 10.0, "search": {"compute": "60", "trials": 5, "picked_trial": picked},
                "compute": {"epochs": {"trials": 60 - final, "final": final}, "search_epochs": 60},
                "uniform": {"test_oa": 0.79 + 0.01 * split, "compute": "matched", "epochs": 60}}

    rows = [row(-2, 0, 48), row(3, 1, 49)]
    lines = budget_lines(rows, 0.5)
    assert lines[2] == "| search-alloc | 10x | 60 | 6 +- 0 | 12 +- 1 | 48 +- 1 | 1/2 | 2 |"
    assert "matched, --compute 60" in uniform_lines(rows, 0.5)[2]
    assert budget_lines([{**rows[0], "search": {"trials": 5}}], 0.5) == []  # no budget: no table


def test_the_model_to_ship_is_chosen_on_validation_alone():
    from search.baseline import verdict
    from search.report import verdict_line

    chosen = {"trial": 3, "val_oa": 0.80, "test_oa": 0.90, "compression_rate": 10.0, "speedup": 2.0}
    uniform = {"method": "uniform l1", "val_oa": 0.82, "test_oa": 0.85, "compression_rate": 10.0, "speedup": 3.5,
               "meets_budget": True}
    v = verdict(chosen, uniform, compute="matched", search_epochs=60, baseline_epochs=60)
    assert v["ship"] == "uniform"  # ahead on validation; the test split, where the search leads, never decides
    assert "ship models/uniform.pt: it leads the search's choice by 2.00 pts on validation OA" in verdict_line(v)
    assert verdict(chosen, {**uniform, "meets_budget": False}, compute="matched", search_epochs=60,
                   baseline_epochs=60)["ship"] == "searched"  # over the budget as measured: never shipped
    tie = verdict(chosen, {**uniform, "val_oa": 0.80}, compute="matched", search_epochs=60, baseline_epochs=60)
    assert tie["ship"] == "searched" and "ship models/uniform.pt" not in verdict_line(tie)
