"""The search-quality protocol's bookkeeping: which trials the final stage fine-tunes, the model a user
ships, the rank sample and its correlation, and the study's quality experiment (the search against
uniform L1, uniform Tucker-2 at VBMF's profile and random search at the same budget, paired by split).

Not accuracy: on 32 px synthetic scenes after one epoch nothing is to be learned about the methods.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from search.config import SearchConfig
from search.final import chosen_row, final_candidates
from search.study import StudyConfig, prepare_study, run_study
from search.study.methods import study_methods
from search.study.tables import pick_lines, quality_lines


def _t(number, oa, params):
    return SimpleNamespace(number=number, values=(oa, params))


TRIALS = [_t(0, 0.70, 1.0e6), _t(1, 0.80, 2.0e6), _t(2, 0.60, 0.5e6), _t(3, 0.78, 2.4e6), _t(4, 0.79, 2.2e6),
          _t(5, 0.50, 0.3e6), _t(6, 0.65, 0.9e6)]
FRONT = [TRIALS[i] for i in (5, 2, 0, 1)]  # the non-dominated ones, cheapest first (as the driver sorts them)


def test_spread_pick_spans_the_front_and_top_takes_the_best_scores_inside_the_budget():
    spread, none = final_candidates(SearchConfig(final_max=2), FRONT, TRIALS)
    assert [t.number for t in spread] == [5, 1] and none == []      # the cheapest and the best
    top, _ = final_candidates(SearchConfig(final_max=3, final_pick="top"), FRONT, TRIALS)
    assert [t.number for t in top] == [1, 4, 3]                      # off the front too: near the budget
    every, _ = final_candidates(SearchConfig(final_pick="top"), FRONT, TRIALS)
    assert len(every) == len(TRIALS)


def test_top_per_method_takes_each_method_combinations_best_in_turn():
    def t(number, oa, method):
        return SimpleNamespace(number=number, values=(oa, 1.0e6), method=method)  # a search.engines TrialRecord

    trials = [t(0, 0.80, "tucker"), t(1, 0.79, "tucker"), t(2, 0.70, "prune"), t(3, 0.78, "tucker"),
              t(4, 0.60, "prune"), t(5, 0.65, "prune+tucker")]
    chosen, sample = final_candidates(SearchConfig(final_pick="top-per-method", final_max=4, rank_sample=1), [], trials)
    assert [x.number for x in chosen] == [0, 2, 5, 1]  # each one's best by score, then the seconds
    assert len(sample) == 1 and sample[0].number in (3, 4)
    top, _ = final_candidates(SearchConfig(final_pick="top", final_max=3), [], trials)
    assert [x.number for x in top] == [0, 1, 3]  # by score alone: one method only
    everything, _ = final_candidates(SearchConfig(final_pick="top-per-method", final_max=None), [], trials)
    assert [x.number for x in everything] == [0, 2, 5, 1, 4, 3]


def test_the_rank_sample_is_spread_over_the_scores_and_never_repeats_a_finalist():
    chosen, sample = final_candidates(SearchConfig(final_max=2, final_pick="top", rank_sample=3), FRONT, TRIALS)
    assert [t.number for t in chosen] == [1, 4]
    # the other five sorted by score: 5 (0.50), 2, 6, 0, 3 (0.78): worst, middle and best kept
    assert [t.number for t in sample] == [5, 6, 3]
    _, all_rest = final_candidates(SearchConfig(final_max=2, rank_sample=50), FRONT, TRIALS)
    assert sorted(t.number for t in all_rest) == [0, 2, 3, 4, 6]


def test_the_chosen_model_is_the_best_validation_oa_inside_the_budget_never_the_best_test_oa():
    rows = [{"trial": 1, "val_oa": 0.80, "test_oa": 0.70, "params": 2e6, "meets_budget": True},
            {"trial": 2, "val_oa": 0.90, "test_oa": 0.60, "params": 3e6, "meets_budget": False},
            {"trial": 3, "val_oa": 0.80, "test_oa": 0.90, "params": 1e6, "meets_budget": True},
            {"trial": 4, "val_oa": 0.75, "test_oa": 0.95, "params": 1e6, "meets_budget": None}]
    assert chosen_row(rows)["trial"] == 3   # over budget left out; a tie goes to fewer params
    assert chosen_row([rows[1]]) is None


def test_quality_table_pairs_each_method_with_the_subject_on_the_same_split():
    def row(method, repeat, oa, rate=4.0):
        return {"id": f"{method}-{rate}-s{repeat}", "method": method, "network": "resnet18", "kd": False,
                "target_rate": rate, "augment": "default", "family": "search", "train_ratio": 0.8,
                "experiments": ["quality"], "status": "ok", "test_oa": oa, "compression_rate": 4.0,
                "speedup": 2.0, "params": 2.8e6, "repeat": repeat}

    rows = [row("baseline", 0, 0.84, None), row("baseline", 1, 0.80, None), row("baseline", 2, 0.86, None),
            row("search-nsga2", 0, 0.85), row("search-nsga2", 1, 0.82), row("search-nsga2", 2, 0.83),
            row("l1", 0, 0.83), row("l1", 1, 0.79), row("l1", 2, 0.84),
            {**row("l1", 3, 0.10), "status": "failed"}]   # a failed cell pairs with nothing
    lines = {x["method"]: x for x in quality_lines(rows, 0.8, "search-nsga2")}
    assert lines["search-nsga2"]["subject_minus"] is None
    d = lines["l1"]["subject_minus"]
    assert d["per_split"] == pytest.approx({0: 0.02, 1: 0.03, 2: -0.01}) and d["wins"] == 2 and d["n"] == 3
    assert d["mean"] == pytest.approx(0.04 / 3)
    assert lines["search-nsga2"]["vs_base"]["per_split"] == pytest.approx({0: 0.01, 1: 0.02, 2: -0.03})


def test_the_pick_table_shows_what_the_validation_choice_cost_against_the_best_finalist():
    def row(repeat, chosen, tests, method="search-alloc", kd=False):
        return {"id": f"{method}-s{repeat}", "method": method, "kd": kd, "target_rate": 4.0, "train_ratio": 0.8,
                "status": "ok", "test_oa": chosen, "val_oa": 0.9, "repeat": repeat,
                "search": {"finalists": [{"trial": i, "test_oa": t} for i, t in enumerate(tests)]}}

    rows = [row(0, 0.80, [0.80, 0.84, 0.82]), row(1, 0.86, [0.86, 0.86, 0.85]),
            row(2, 0.70, [0.70]),                                  # one finalist: no choice was made
            {**row(3, 0.5, [0.5, 0.6]), "status": "failed"},       # a failed cell counts nowhere
            {**row(4, 0.8, [0.8, 0.9]), "train_ratio": 0.5},       # another training ratio
            row(0, 0.81, [0.83, 0.81], kd=True),                   # KD on: its own line
            {"id": "l1-s0", "method": "l1", "kd": False, "target_rate": 4.0, "train_ratio": 0.8,
             "status": "ok", "test_oa": 0.8, "repeat": 0}]        # not searched
    lines = pick_lines(rows, 0.8)
    assert len(lines) == 4 and lines[2].startswith("| search-alloc | 4x | no | 3 |") and "| yes | 2 |" in lines[3]
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    # chosen 83.00 +- 4.24; finalists' mean (82.00, 85.67); best (84, 86); chosen minus best (-4, 0); 1 of 2 best
    assert cells[5] == "83.00 +- 4.24" and cells[6] == "83.83 +- 2.59" and cells[7] == "85.00 +- 1.41"
    assert cells[8] == "-2.00 +- 2.83" and cells[9] == "1/2" and cells[10] == "2"
    assert pick_lines([rows[-1]], 0.8) == []


def test_other_final_choice_rules_are_replayed_on_the_same_finalists_never_by_test_oa():
    from search.study.tables import PICK_RULES, replay_pick, replayable, rule_lines

    def f(trial, test, val, score, params):
        return {"trial": trial, "test_oa": test, "val_oa": val, "search_val_oa": score, "params": params}

    def row(finalists, **kw):
        return {"id": "c", "status": "ok", "train_ratio": 0.8, "search": {"finalists": finalists}, **kw}

    # a validation tie between trials 0 and 1; trial 2 has the best trial score; the best test OA is trial 1's
    tie = [f(0, 0.80, 0.90, 0.70, 100.0), f(1, 0.86, 0.90, 0.72, 200.0), f(2, 0.83, 0.88, 0.80, 50.0)]
    picked = {rule: replay_pick(tie, rule)["trial"] for rule in PICK_RULES}
    assert list(picked.values()) == [0, 1, 1, 2, 2]  # fewer params, better score, more params, score, sum
    assert replay_pick([f(0, 0.8, 0.9, 0.7, 1.0), f(1, 0.9, 0.9, 0.7, 1.0)], next(iter(PICK_RULES)))["trial"] == 0
    # cells no rule can be replayed on: one finalist, a finalist never tested, a failed cell
    assert not replayable(row(tie[:1])) and not replayable(row([*tie[:2], {**tie[2], "test_oa": None}]))
    assert not replayable(row(tie, status="failed")) and rule_lines([row(tie, status="failed")]) == []
    other = [f(0, 0.70, 0.80, 0.60, 1.0), f(1, 0.74, 0.79, 0.65, 1.0)]
    lines = rule_lines([row(tie), row(other), row(tie[:1])])
    assert len(lines) == 2 + len(PICK_RULES)
    cells = {c[0]: c[1:] for c in ([x.strip() for x in line.split("|")[1:-1]] for line in lines[2:])}
    # the study's rule: 0.80 - 0.83 and 0.70 - 0.72 -> -2.50 +- 0.71 pts, never ahead; 2 cells
    assert cells["validation OA, ties to fewer params (the study's)"] == ["-2.50 +- 0.71", "0/2", "0.00 +- 0.00",
                                                                          "0 / 0", "2"]
    # the trial score: 0.83 - 0.83 and 0.74 - 0.72 -> +1.00 +- 1.41; against the study's +3 and +4 pts
    assert cells["trial score"] == ["1.00 +- 1.41", "1/2", "3.50 +- 0.71", "2 / 0", "2"]


def test_the_quality_experiment_runs_the_search_and_its_baselines_at_one_budget(tmp_path):
    config = StudyConfig.from_settings(image_size=32, networks=("resnet18",), teacher=None, repeats=2, epochs=1, finetune_epochs=1,
                         rates=(2.0,), experiments=("quality",), search_trials=3, search_fidelity=1, search_final=2,
                         quality_methods=("search-nsga2", "search-random", "l1", "tucker-vbmf-scaled"),
                         quality_subject="search-nsga2", search_min_target=None, rank_sample=1,
                         out=str(tmp_path / "runs"), progress=False, name="q")
    prep = prepare_study(config, say=lambda m: None)
    assert sorted({c.method for c in prep.cells}) == ["baseline", "l1", "search-nsga2", "search-random",
                                                     "tucker-vbmf-scaled"]
    res = run_study(prep, say=lambda m: None)
    rows = [json.loads(p.read_text()) for p in (prep.study_dir / "cells").glob("*.json")]
    assert res["failed"] == [] and len(rows) == len(prep.cells) == 10
    for r in rows:
        assert r["status"] == "ok", r.get("reason")
        if r["method"] != "baseline":  # every method at the same budget: params <= 1/2 of the base
            assert r["compression_rate"] >= 2.0 * 0.999, r["id"]
        if r["method"].startswith("search-"):
            s = r["search"]
            assert s["sampler"] == ("random" if r["method"] == "search-random" else "nsga2")
            assert s["methods"] == ["prune", "tucker"] and s["pick"] == "top" and len(s["finalists"]) <= 2
            # the cell's answer is the best validation OA of the finalists, not the best test OA
            assert r["val_oa"] == max(f["val_oa"] for f in s["finalists"])
            assert r["rank"]["trials"] == len(s["finalists"]) + len(s["rank_sample"])
            assert {f["trial"] for f in s["finalists"]}.isdisjoint({f["trial"] for f in s["rank_sample"]})
    md = (prep.study_dir / "tables.md").read_text()
    assert "Search quality" in md and "search-nsga2 minus it (pts, paired)" in md
    assert "| search-nsga2 | 2x |" in md and "| l1 | 2x |" in md and "(itself)" in md
    assert "trials fine-tuned in full" in md
    chose = any(len(r.get("search", {}).get("finalists", ())) > 1 for r in rows)
    assert ("chosen minus best finalist (pts)" in md) == chose
    # a searched cell run again on its kept search (killed after the search, before its row) counts every trial,
    # not only those of the last process
    cell = next((prep.study_dir / "cells").glob("search-nsga2-*-s0.json"))
    assert json.loads(cell.read_text())["search"]["trials"] == 3
    cell.unlink()
    run_study(prepare_study(config, say=lambda m: None), say=lambda m: None)
    assert json.loads(cell.read_text())["search"]["trials"] == 3
    # resuming under another search setting would mix incomparable searched cells
    from rsc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"search_pick='top' \(now 'spread'\)"):
        prepare_study(replace(config, search=replace(config.search, final_pick="spread")), say=lambda m: None)
    with pytest.raises(ConfigError, match=r"search_min_target=0.1 \(now 0.9\)"):  # None: the search's own 0.1
        prepare_study(replace(config, search=replace(config.search, min_target=0.9)), say=lambda m: None)
    with pytest.raises(ConfigError, match=r"search.population_size=8 \(now 4\)"):  # a field without a study flag
        prepare_study(replace(config, search=replace(config.search, population_size=4)), say=lambda m: None)


def test_by_default_the_searched_cells_are_compared_at_their_rate():
    """A study's searched cell answers "how good at this rate": its trials aim at 90-100% of the rate and the
    finalists are the best-scored inside it. The search's own defaults (trials over 1-10x the rate, finalists
    spread along the front) chose models at 4.2-15.3x for a 4x cell (benchmarks/README.md, the searched
    policies at 4x). The quality protocol's subject is the allocated search, against its random twin."""
    d = StudyConfig()
    assert d.search.final_pick == "top" and d.search.min_target == 0.9
    assert d.subject() == "search-alloc" and d.quality_methods[:2] == ("search-alloc", "search-alloc-random")
    methods = study_methods()
    twin = methods["search-alloc-random"]
    assert twin.sampler == "random" and methods["search-alloc"].sampler == "nsga2"
    assert all(getattr(twin, k) == getattr(methods["search-alloc"], k)
               for k in ("search_methods", "allocate", "allocate_damage"))
    # no subject named: the first searched method of the list, else the first method
    assert StudyConfig(quality_methods=("l1", "search-nsga2", "search-random")).subject() == "search-nsga2"
    assert StudyConfig(quality_methods=("l1", "tucker-vbmf-scaled")).subject() == "l1"
    assert StudyConfig(quality_methods=("l1", "search-nsga2"), quality_subject="l1").subject() == "l1"


def test_allocated_pruning_lands_on_the_budget_and_the_allocated_search_is_configured_so(tmp_path, monkeypatch):
    config = StudyConfig.from_settings(image_size=32, networks=("resnet18",), teacher=None, repeats=1, epochs=1, finetune_epochs=1,
                         rates=(3.0,), experiments=("quality",), search_trials=2, search_fidelity=1, search_final=1,
                         quality_methods=("search-alloc", "search-alloc-random", "l1-params", "l1-sensitivity"),
                         quality_subject="l1-sensitivity", out=str(tmp_path / "runs"), progress=False, name="qa")
    seen = []

    def fake_run(sc, **kw):  # the search itself is tested in tests/search/test_allocate_search.py
        seen.append(sc)
        raise RuntimeError("not run here")
    monkeypatch.setattr("search.driver.run", fake_run)
    prep = prepare_study(config, say=lambda m: None)
    run_study(prep, say=lambda m: None)
    rows = {r["method"]: r for r in (json.loads(p.read_text()) for p in (prep.study_dir / "cells").glob("*.json"))}
    assert sorted(sc.sampler for sc in seen) == ["nsga2", "random"]  # search-alloc and its random twin
    for sc in seen:
        assert sc.allocate == "params" and sc.allocate_damage == "sensitivity" and sc.min_target == 0.9
        assert sc.space_methods()[0] == ("prune-alloc", "tucker-alloc")
    for method in ("l1-params", "l1-sensitivity"):
        assert rows[method]["status"] == "ok", rows[method].get("reason")
        assert 3.0 <= rows[method]["compression_rate"] <= 3.0 / 0.97 + 0.01
    md = (prep.study_dir / "tables.md").read_text()
    assert "| l1-params | 3x |" in md and "l1-sensitivity minus it (pts, paired)" in md


def test_a_search_stopped_by_ctrl_c_leaves_its_cell_unfinished_not_unreachable(tmp_path, monkeypatch):
    """The search catches Ctrl-C itself and returns what it has (no model chosen): the study must stop
    there and run the cell again on resume, not record it as a budget the search could not reach."""
    from search.report import SearchResult

    config = StudyConfig.from_settings(image_size=32, networks=("resnet18",), teacher=None, repeats=1, epochs=1, finetune_epochs=1,
                         rates=(3.0,), experiments=("quality",), search_trials=2, search_fidelity=1, search_final=1,
                         quality_methods=("search-alloc",), quality_subject="search-alloc",
                         out=str(tmp_path / "runs"), progress=False, name="qi")

    def interrupted_search(sc, **kw):
        return SearchResult(study="s", storage="x", tracking_uri="x", experiment_id="1", parent_run_id="p",
                            out_dir="o", artifact_uri="a", objectives=[("accuracy", "maximize")], counts={},
                            base={}, final=[], front=[], interrupted=True)
    monkeypatch.setattr("search.driver.run", interrupted_search)
    prep = prepare_study(config, say=lambda m: None)
    res = run_study(prep, say=lambda m: None)
    assert res["interrupted"]
    assert not list((prep.study_dir / "cells").glob("search-alloc-*.json"))


@pytest.mark.parametrize("extra, pattern", [
    (["--quality-methods", "l1,nope"], "unknown nope"),
    (["--experiments", "quality", "--quality-methods", "l1", "--quality-subject", "search-nsga2"],
     "is not one of --quality-methods"),
    (["--search-pick", "best"], "invalid choice: 'best'"),
])
def test_bad_quality_input_is_one_line_and_exit_code_2(tmp_path, capsys, extra, pattern):
    from search.study.__main__ import main

    argv = ["--image-size", "32", "--networks", "resnet18", "--teacher", "none", "--repeats", "1", "--epochs", "1",
            "--out", str(tmp_path / "runs"), "--no-progress", "--plan", *extra]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and pattern in last


def test_finetune_kd_distils_in_every_fine_tune_of_the_search_and_only_when_asked(tmp_path, monkeypatch):
    import spaces.distill
    from search.run import run
    from tests.search.conftest import tiny_config

    made = []
    real = spaces.distill.kd_loss
    monkeypatch.setattr(spaces.distill, "kd_loss", lambda *a, **kw: made.append(kw) or real(*a, **kw))
    cfg = dict(trials=2, methods=("prune",), final_max=1, final_epochs=1, fidelity_epochs=1)
    res = run(tiny_config(tmp_path / "plain", **cfg))
    assert res.final and made == []   # channel pruning alone has no distillation step
    res = run(tiny_config(tmp_path / "kd", finetune_kd=True, rank_sample=1, **cfg))
    # 2 trials + 1 finalist + 1 rank-sample trial, every one with the KD loss of the search's defaults
    assert len(made) == 4 and all(kw["temperature"] == 4.0 and kw["alpha"] == 0.7 for kw in made)
    assert res.chosen["trial"] == res.final[0]["trial"] and res.rank["trials"] == 2 and len(res.rank_sample) == 1


def test_successive_halving_keeps_the_better_half_by_validation_oa_until_one_is_fine_tuned_in_full(tmp_path):
    from search.objective import evaluate_trial
    from search.run import run
    from tests.search.conftest import tiny_config

    calls = []

    def spy(request, **kw):
        calls.append((request["epochs"], request.get("evaluate_test", False), request.get("latency", True)))
        return evaluate_trial(request, **kw)

    res = run(tiny_config(tmp_path, trials=4, final_pick="top", final_max=4, final_rungs=3, final_epochs=2),
              trial_fn=spy)
    rungs = res.halving
    assert res.counts["complete"] == 4
    assert [len(r["kept"]) for r in rungs] == [2, 1] and [r["epochs"] for r in rungs] == [1, 1]
    assert len(rungs[0]["val_oa"]) == 4
    for r in rungs:  # the kept are the best validation OAs of their rung (ties to the lower trial number)
        order = sorted(r["val_oa"], key=lambda n: (-r["val_oa"][n], int(n)))
        assert [str(n) for n in r["kept"]] == order[:len(r["kept"])]
    assert [f["trial"] for f in res.final] == rungs[-1]["kept"]
    rung_calls = [c for c in calls if c[2] is False]
    assert rung_calls == [(1, False, False)] * 6                     # 4 + 2 candidates scored, untimed, no test split
    assert calls[-1] == (2, True, True)              # then the survivor's final fine-tune with the test split


def test_compression_tables_give_each_line_its_paired_difference_to_the_base_of_the_same_split():
    from search.study.tables import summarise, with_base_differences

    def row(method, repeat, oa, rate=2.0, kd=False):
        return {"id": f"{method}-{rate}-{kd}-s{repeat}", "method": method, "network": "resnet18", "kd": kd,
                "target_rate": rate, "augment": "default", "family": "local", "train_ratio": 0.8,
                "experiments": ["families"], "status": "ok", "test_oa": oa, "compression_rate": 2.0,
                "speedup": 1.5, "params": 5e6, "repeat": repeat}

    rows = [row("baseline", 0, 0.80, None), row("baseline", 1, 0.90, None),
            row("tucker", 0, 0.79), row("tucker", 1, 0.88), row("tucker", 0, 0.85, kd=True)]
    lines = {(x["method"], x["kd"]): x for x in with_base_differences(summarise(rows, "families", 0.8), rows, 0.8,
                                                                      "families")}
    assert lines[("baseline", False)]["vs_base"] is None
    plain = lines[("tucker", False)]["vs_base"]
    assert plain["per_split"] == pytest.approx({0: -0.01, 1: -0.02}) and plain["wins"] == 0
    assert lines[("tucker", True)]["vs_base"]["per_split"] == pytest.approx({0: 0.05})  # KD is its own line


def test_the_baselines_table_flags_a_network_that_collapsed_to_chance():
    from search.study.tables import _table, summarise

    rows = [{"id": f"{net}-s{i}", "method": "baseline", "network": net, "kd": False, "target_rate": None,
             "augment": "default", "family": "baseline", "train_ratio": 0.8, "experiments": ["baselines"],
             "status": "ok", "test_oa": oa, "params": 1e6, "repeat": i}
            for net, oas in (("squeezenet1_1", (1 / 21, 1 / 21)), ("resnet18", (0.83, 0.85))) for i, oa in enumerate(oas)]
    md = "\n".join(_table(summarise(rows, "baselines", 0.8), "baselines", 21))
    assert "| squeezenet1_1 | 4.76 +- 0.00 (at chance on 2 of 2: training collapsed) |" in md
    assert "| resnet18 | 84.00 +- 1.41 |" in md and "lower it for them" in md


def test_render_shows_the_front_only_when_no_final_stage_ran(capsys):
    from search.report import SearchResult, render

    res = SearchResult(study="s", storage="x", tracking_uri="x", experiment_id="1", parent_run_id="p", out_dir="o",
                       artifact_uri="a", objectives=[("accuracy", "maximize"), ("params", "minimize")],
                       counts={"finished": 1, "complete": 1, "inside_budget": 1},
                       base={"trial": "base", "method": "resnet18", "test_oa": 0.8, "val_oa": 0.8, "params": 1e7},
                       final=[{"trial": 0, "method": "prune", "test_oa": 0.7, "val_oa": 0.75, "params": 2e6,
                               "meets_budget": True, "compression_rate": 5.0}],
                       front=[{"trial": 0, "method": "prune", "val_oa": 0.6, "params": 2e6}])
    res.chosen = dict(res.final[0])
    render(res)
    out = capsys.readouterr().out
    assert "after final fine-tuning" in out and "chosen (best validation OA" in out
    assert "no final stage run" not in out and "trial score" not in out
    res.rank = {"trials": 3, "final_epochs": 20, "fidelity_epochs": 2,
                "test_oa": {"spearman": 0.5, "kendall": 0.33}, "val_oa": {"spearman": None, "kendall": None}}
    render(res)
    out = capsys.readouterr().out
    assert "test OA Spearman +0.50, Kendall +0.33; validation OA n/a" in out and "no final stage run" not in out
    res.final, res.chosen, res.rank = [], None, {}
    render(res)
    assert "no final stage run" in capsys.readouterr().out


def test_a_searched_cell_shows_its_trials_and_final_stage_on_the_study_bar(tmp_path, capsys):
    """A searched cell runs for tens of minutes: the study bar's postfix follows its trials and final stage."""
    config = StudyConfig.from_settings(image_size=32, networks=("resnet18",), teacher=None, repeats=1, epochs=1, finetune_epochs=1,
                         rates=(2.0,), experiments=("quality",), quality_methods=("search-nsga2",),
                         quality_subject="search-nsga2", search_trials=2, search_fidelity=1, search_final=1,
                         search_pick="top", rank_sample=0, out=str(tmp_path / "runs"), progress=True, name="bar")
    res = run_study(prepare_study(config, say=lambda m: None), say=lambda m: None)
    assert res["failed"] == []
    err = capsys.readouterr().err
    cell = "search-nsga2-resnet18-r0.8-x2-aug-default-s0"
    for detail in ("trial 0/2", "trial 1/2", "trial 2/2", "final stage: fine-tuning 1"):
        assert f"{cell}, {detail}" in err, detail
