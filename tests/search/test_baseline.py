"""The uniform baseline beside every search's final models, and the compute each side spent."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.search.conftest import tiny_config

#: Request fields that may differ between the baseline and a final model: what it is, where it aims, its seed.
OWN = {"plan", "limits", "target", "seed", "epochs"}


def test_the_uniform_preset_of_the_searched_spaces_is_the_baseline():
    from spaces.registry import resolve_space, uniform_baseline

    assert uniform_baseline(("prune", "tucker", "distill", "quant"))[1].name == "l1"  # chain order: pruning first
    assert uniform_baseline(("tucker", "prune"))[1].name == "tucker"
    name, preset = uniform_baseline(("prune-alloc",))  # an allocated variant: the space it allocates
    assert name == resolve_space("prune") and preset.name == "l1" and preset.uniform
    assert uniform_baseline(("tucker-alloc", "quant"))[0] == resolve_space("tucker")
    assert uniform_baseline(("quant",)) is None and uniform_baseline(("sparse", "distill")) is None


def _search(tmp_path, **changes):
    from search.driver import run
    from search.objective import evaluate_trial

    requests = []

    def recording(request, **kw):
        requests.append(request)
        return evaluate_trial(request, **kw)

    config = tiny_config(tmp_path, methods=("prune",), budgets=("params<50%",), objectives=("accuracy", "params"),
                         trials=2, final_epochs=2, **{"baseline": True, **changes})
    return run(config, trial_fn=recording), requests, config


def test_the_uniform_baseline_is_fine_tuned_like_the_final_models_and_reported_beside_them(tmp_path):
    from mlflow import MlflowClient

    from search.baseline import SEED_SLOT
    from search.report import render
    from search.request import trial_seed
    from spaces import load_compressed

    result, requests, config = _search(tmp_path, baseline_compute="same")
    finals = [r for r in requests if r["evaluate_test"] and r["seed"] != trial_seed(config.seed, SEED_SLOT)]
    uniform = [r for r in requests if r["seed"] == trial_seed(config.seed, SEED_SLOT)]
    assert len(finals) == len(result.final) == 1 and len(uniform) == 1
    final, base_line = finals[0], uniform[0]
    # fine-tuned alike: every setting of the fine-tune is the final models' own
    assert {k: v for k, v in base_line.items() if k not in OWN} == {k: v for k, v in final.items() if k not in OWN}
    assert base_line["epochs"] == final["epochs"] == config.final_epochs
    # the uniform configuration, projected onto the budget itself (not a trial's aim)
    step = base_line["plan"]["steps"][0]
    assert set(step["params"]["ratios"].values()) == {0.05} and step["params"]["criterion"] == "l1"
    assert base_line["limits"]["params"] == pytest.approx(0.5 * result.base_costs["params"]) and not base_line["target"]
    row = result.baseline
    assert row["trial"] == "uniform" and row["method"] == "uniform l1" and row["epochs"] == config.final_epochs
    assert row["params"] <= 0.5 * result.base_costs["params"] and row["meets_budget"] is True
    assert row["params"] > 0.4 * result.base_costs["params"]  # projected onto the budget, not past it
    shipped, plan = load_compressed(row["file"])
    assert row["file"].endswith("models/uniform.pt") and plan.steps[0].record  # the projected plan, replayable

    v = result.verdict
    assert v["test_oa_minus_uniform"] == pytest.approx(100 * (result.chosen["test_oa"] - row["test_oa"]))
    assert v["compute"] == "same" and v["baseline_epochs"] == config.final_epochs

    compute = result.compute
    assert compute["epochs"]["trials"] == 2 * config.fidelity_epochs  # no early stop in the tiny search
    assert compute["epochs"]["final"] == config.final_epochs and compute["epochs"]["baseline"] == config.final_epochs
    assert compute["search_epochs"] == 2 * config.fidelity_epochs + config.final_epochs
    assert compute["exploration_share"] == pytest.approx(2 / 4) and compute["base_epochs"] == config.base_epochs

    out = io.StringIO()
    render(result, out)
    text = out.getvalue()
    assert "searched minus uniform (test OA)" in text and "uniform l1" in text and "compute: 4 epoch-equivalents" in text
    assert "at equal fine-tune length per model" in text and "--baseline-compute matched, the default, gives it" in text
    folder = tmp_path / "runs" / "tiny" / "pareto"
    rows = list(csv.DictReader(open(folder / "front.csv")))
    assert rows[-1]["trial"] == "uniform"
    summary = json.loads((folder / "front.json").read_text())
    assert summary["verdict"]["test_oa_minus_uniform"] == pytest.approx(v["test_oa_minus_uniform"])
    assert summary["compute"]["search_epochs"] == compute["search_epochs"]
    metrics = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.parent_run_id).data.metrics
    assert metrics["baseline_test_oa"] == pytest.approx(row["test_oa"])
    assert metrics["test_oa_minus_uniform"] == pytest.approx(v["test_oa_minus_uniform"])
    assert metrics["compute_search_epochs"] == compute["search_epochs"]


def test_with_matched_compute_the_baseline_gets_every_epoch_the_search_spent(tmp_path):
    result, requests, config = _search(tmp_path, baseline_compute="matched", final_rungs=2, final_max=2,
                                       final_pick="top")
    spent = result.compute["epochs"]
    assert spent["halving"] > 0  # the rungs count: they are the search's compute too
    searched = spent["trials"] + spent["halving"] + spent["final"]
    assert requests[-1]["epochs"] == searched == result.baseline["epochs"] == spent["baseline"]
    assert result.verdict["compute"] == "matched" and result.verdict["search_epochs"] == searched


def test_no_baseline_where_no_searched_method_has_a_uniform_configuration(tmp_path):
    from search.driver import run

    result = run(tiny_config(tmp_path, trials=2, baseline=True))  # magnitude pruning only
    assert result.baseline is None and result.verdict is None
    assert any("no uniform baseline" in n for n in result.notes)
    assert result.compute["epochs"]["trials"] == 2 and "baseline" not in result.compute["epochs"]


def test_the_baseline_flags(capsys):
    from search.run import build_parser, config_from_args, main

    parse = build_parser().parse_args
    default = config_from_args(parse(["--budget", "params<50%"]))
    assert default.baseline is True and default.baseline_compute == "matched"  # on, at equal compute, unless asked
    config = config_from_args(parse(["--no-baseline", "--baseline-compute", "same", "--budget", "params<50%"]))
    assert config.baseline is False and config.baseline_compute == "same"
    with pytest.raises(SystemExit) as exc:
        main(["--baseline-compute", "twice", "--budget", "params<50%"])
    assert exc.value.code == 2 and "twice" in capsys.readouterr().err


def test_the_ledger_counts_each_part_and_says_where_it_went():
    from search.compute import Ledger, trials_ledger
    from search.engines.base import TrialRecord

    trials = [TrialRecord(number=0, state="complete", epochs_run=2, seconds={"total": 10.0}),
              TrialRecord(number=1, state="pruned", epochs_run=1, seconds={"load": 1.0, "finetune": 3.0}),
              TrialRecord(number=2, state="complete", val_history=(0.5, 0.6, 0.7)),  # stored before epochs_run
              TrialRecord(number=3, state="fail", interrupted=True, epochs_run=2),  # run again on --resume
              TrialRecord(number=4, state="running")]
    ledger = trials_ledger(trials, device="cpu", base_epochs=30)
    assert ledger.epochs == {"trials": 6.0} and ledger.seconds == {"trials": 14.0}
    ledger.add("final", epochs=30, seconds=100.0)
    ledger.add("baseline", epochs=36)
    assert ledger.search_epochs() == 36 and ledger.exploration_share() == pytest.approx(6 / 36)
    ledger.add("rank_sample", epochs=30)
    assert ledger.matched_epochs() == 36 and ledger.search_epochs() == 66  # measuring is not the search's model
    assert Ledger.from_dict(ledger.to_dict()).to_dict() == ledger.to_dict()
    line = ledger.line()
    assert "66 epoch-equivalents" in line and "9% exploring" in line and "the uniform baseline 36" in line
    with pytest.raises(ValueError, match="unknown compute part"):
        ledger.add("lunch", epochs=1)


def test_the_verdict_line_says_when_the_uniform_model_won():
    from search.report import verdict_line

    v = {"compute": "matched", "search_epochs": 138.0, "baseline_epochs": 138.0, "chosen_trial": 7,
         "baseline": "uniform l1", "test_oa_minus_uniform": -1.5, "val_oa_minus_uniform": -0.5,
         "compression_rate": [10.2, 10.0], "speedup": [2.0, 3.8]}
    text = verdict_line(v)
    assert "-1.50 pts" in text and "at equal compute" in text and "models/uniform.pt is the better model" in text
    assert "validation OA tied them" in verdict_line({**v, "val_oa_minus_uniform": 0.0})
    assert "the other way, by +0.80 pts" in verdict_line({**v, "val_oa_minus_uniform": 0.8})
    text = verdict_line({**v, "test_oa_minus_uniform": 2.0, "compute": "same"})
    assert "+2.00 pts" in text and "equal fine-tune length" in text and "better model" not in text


def test_the_study_table_pairs_each_searched_cell_with_its_own_uniform_model():
    from search.study.tables import uniform_lines

    def cell(searched, uniform, split):
        return {"train_ratio": 0.5, "status": "ok", "method": "search-alloc", "target_rate": 10.0, "repeat": split,
                "test_oa": searched, "compression_rate": 10.5,
                "uniform": {"test_oa": uniform, "epochs": 138, "compute": "matched", "compression_rate": 10.1},
                "compute": {"search_epochs": 138.0, "exploration_share": 0.35, "search_seconds": 1200.0,
                            "seconds": {"baseline": 600.0}}}

    rows = [cell(0.85, 0.87, 0), cell(0.86, 0.85, 1), {**cell(0.9, 0.9, 2), "train_ratio": 0.8},
            {k: v for k, v in cell(0.8, 0.8, 3).items() if k != "uniform"}]  # another ratio; a cell without one
    lines = uniform_lines(rows, 0.5)
    assert len(lines) == 3
    row = lines[2]
    assert row.startswith("| search-alloc | 10x | matched | 85.50 +- 0.71 | 86.00 +- 1.41 | -0.50 +- 2.12 (1/2) |")
    assert "| 138 +- 0 / 138 +- 0 | 35 +- 0% | 20.0 +- 0.0 / 10.0 +- 0.0 |" in row
    assert uniform_lines(rows[3:], 0.5) == []  # stored studies' tables stay as they were
