"""The zero-shot screen (``--zero-shot``): EagleEye's adaptive-BN score of a compressed model before any
fine-tuning, recorded per trial, ranked against the final OA, and used to stop clearly dominated trials
before they cost a fine-tune - without counting them towards ``--trials``.

Bookkeeping and exactness, not accuracy: on 32 px synthetic scenes nothing is learned about the score.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.search.conftest import tiny_config


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))


def test_zero_epoch_oa_scores_a_copy_with_batchnorm_re_estimated():
    from rsc.metrics import evaluate
    from rsc.loop import recalibrate_bn
    from spaces.finetune import zero_epoch_oa

    g = torch.Generator().manual_seed(1)
    batches = [(3.0 + 2.0 * torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
               for _ in range(3)]
    model = _tiny_net().eval()
    before = copy.deepcopy(model.state_dict())
    score = zero_epoch_oa(model, batches[:2], batches, num_classes=3)
    # the caller's model is untouched: its statistics, weights and mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training
    by_hand = recalibrate_bn(copy.deepcopy(model), batches[:2], max_batches=2)
    assert score == pytest.approx(evaluate(by_hand, batches, num_classes=3).oa)
    assert 0.0 <= score <= 1.0
    # no batches: scored as it is, still on a copy
    assert zero_epoch_oa(model, [], batches, num_classes=3) == pytest.approx(evaluate(model, batches, num_classes=3).oa)


def test_epoch_fronts_take_epoch_zero_from_the_zero_shot_scores():
    from search.state import epoch_fronts

    def t(zero, history, cost):
        return SimpleNamespace(val_history=history, zero_shot_oa=zero, values=[history[-1], cost])

    D = ["maximize", "minimize"]
    done = [t(0.30, [0.5, 0.9], 10.0), t(0.40, [0.6, 0.8], 5.0), t(None, [0.7, 0.8], 1.0),
            t(float("nan"), [0.1, 0.7], 2.0), t(0.20, [0.2, 0.6], 6.0)]
    fronts = epoch_fronts(done, 2, D, zero_shot=True)
    assert set(fronts) == {"0", "1"}
    assert fronts["0"] == [[0.40, 5.0]]  # no score and NaN left out; [0.3, 10] and [0.2, 6] dominated
    assert epoch_fronts(done, 1, D, zero_shot=True) == {"0": [[0.40, 5.0]]}  # the screen alone
    assert "0" not in epoch_fronts(done, 2, D)


def test_the_driver_sends_the_screen_only_when_asked(tmp_path):
    from search.run import run

    seen = []

    def fake_trial(request):
        seen.append((request.get("zero_shot"), request.get("early_stop")))
        n = len(seen)
        return {"status": "ok", "val_oa": 0.5, "zero_shot_oa": 0.1 * n, "history": [{"epoch": 1, "val_oa": 0.5}],
                "plan": request["plan"], "seconds": {},
                "costs": {"params": 1e6, "nonzero_params": 1e6 - n, "macs": 1e7, "size": 4e6}}

    run(tiny_config(tmp_path, trials=3, final_max=0, zero_shot=True, zero_shot_margin=0.05), trial_fn=fake_trial)
    assert [z for z, _ in seen] == [True, True, True]
    assert seen[0][1] is None  # nothing finished yet
    for _, early in seen[1:]:  # one fine-tune epoch, no early stop: the screen's front alone
        assert set(early["fronts"]) == {"0"} and early["zero_shot_margin"] == 0.05 and early["margin"] is None
    assert seen[2][1]["fronts"]["0"] == [[0.2, 1e6 - 2]]  # cheaper and better scored: (0.1, 1e6 - 1) is dominated
    seen.clear()
    run(tiny_config(tmp_path, trials=2, final_max=0, zero_shot=True, zero_shot_margin=-1, study="scored"),
        trial_fn=fake_trial)
    assert [e for _, e in seen] == [None, None]  # scored, never screened
    seen.clear()
    run(tiny_config(tmp_path, trials=2, final_max=0, study="off"), trial_fn=fake_trial)
    assert seen == [(False, None), (False, None)]


def test_the_screen_compares_a_trial_only_with_its_own_method_combination(tmp_path):
    """Before fine-tuning, methods start from very different places (Tucker-2 at 10x keeps ~0.5 OA,
    channel pruning ~0.1, and both end alike): a trial is screened against its own kind only."""
    from search.run import run

    finished, checked = [], []

    def fake_trial(request):
        combo = "+".join(step["space"] for step in request["plan"]["steps"])
        early = request.get("early_stop")
        if early:
            owners = {zs: c for c, zs in finished}
            checked.append(all(owners[oa] == combo for oa, _ in early["fronts"].get("0", [])))
        zs = round(0.01 * len(finished) + (0.5 if "prune.channel" in combo else 0.0), 6)
        finished.append((combo, zs))
        return {"status": "ok", "val_oa": 0.5, "zero_shot_oa": zs, "history": [{"epoch": 1, "val_oa": 0.5}],
                "plan": request["plan"], "seconds": {},
                "costs": {"params": 1e6, "nonzero_params": 1e6 - len(finished), "macs": 1e7, "size": 4e6}}

    run(tiny_config(tmp_path, trials=8, final_max=0, methods=("sparse", "prune"), max_combo=1, zero_shot=True),
        trial_fn=fake_trial)
    assert len({c for c, _ in finished}) == 2 and checked and all(checked)


def test_a_screened_trial_stops_before_fine_tuning_and_does_not_count(tmp_path):
    """The real trial function: a dominating adaptive-BN point screens the first trial before any epoch;
    the search still finishes its 2 counted trials, and the ones not screened are scored too."""
    from search.objective import evaluate_trial
    from search.run import run

    fronts = [{"0": [[1.5, 0.0]]}]

    def with_front(request, **kw):
        if fronts:
            request["early_stop"] = {"fronts": fronts.pop(0), "directions": ["maximize", "minimize"],
                                     "cost_keys": ["nonzero_params"], "margin": None, "zero_shot_margin": 0.0}
        return evaluate_trial(request, **kw)

    result = run(tiny_config(tmp_path, trials=2, final_max=0, zero_shot=True), trial_fn=with_front)
    states = [(t["state"], t.get("screened", False)) for t in result.trials]
    assert states == [("pruned", True), ("complete", False), ("complete", False)]
    assert result.counts["screened"] == 1 and result.counts["complete"] == 2
    import optuna

    study = optuna.load_study(study_name=result.study, storage=result.storage)
    first, *rest = study.get_trials(deepcopy=False)
    assert first.user_attrs["screened"] is True and 0.0 <= first.user_attrs["zero_shot_oa"] <= 1.0
    assert all(0.0 <= t.user_attrs["zero_shot_oa"] <= 1.0 for t in rest)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)
    run0 = client.get_run(first.user_attrs["mlflow_run_id"])
    assert run0.data.tags["screened"] == "true" and run0.data.metrics["epochs_run"] == 0
    assert "screened before fine-tuning" in run0.data.tags["reason"]


def test_scoring_leaves_the_fine_tune_exactly_as_it_was(tmp_path):
    """The score is taken on a copy: the same request with and without it trains the same model."""
    from search.objective import evaluate_trial
    from search.run import run

    requests = []

    def spy(request, **kw):
        requests.append(copy.deepcopy(request))
        return evaluate_trial(request, **kw)

    run(tiny_config(tmp_path, trials=1, final_max=0, fidelity_epochs=2, methods=("prune",)), trial_fn=spy)
    request = {**requests[0], "latency": False, "early_stop": None}
    plain = evaluate_trial(request)
    scored = evaluate_trial({**request, "zero_shot": True})
    assert plain["zero_shot_oa"] is None and 0.0 <= scored["zero_shot_oa"] <= 1.0
    assert scored["val_oa"] == plain["val_oa"]
    assert [h["val_oa"] for h in scored["history"]] == [h["val_oa"] for h in plain["history"]]
    assert scored["seconds"]["zero_shot"] > 0


def test_screened_trials_stop_counting_after_as_many_as_trials(tmp_path):
    """A screen that stops everything cannot run forever: past --trials screened ones, they count."""
    from search.run import run

    calls = []

    def always_screened(request):
        calls.append(1)
        return {"status": "pruned", "val_oa": 0.1, "zero_shot_oa": 0.1, "epochs_run": 0, "history": [],
                "plan": request["plan"], "seconds": {}, "screened": True, "reason": "screened before fine-tuning"}

    result = run(tiny_config(tmp_path, trials=2, final_max=0, zero_shot=True), trial_fn=always_screened)
    assert len(calls) == 4 and result.counts["screened"] == 4 and result.counts["finished"] == 4


def test_the_rank_correlation_of_the_zero_shot_score_is_reported(tmp_path, capsys):
    from search.report import render
    from search.request import trial_seed
    from search.run import run

    numbers = {trial_seed(0, n): n for n in range(100)}  # tiny_config's seed 0

    def fake_trial(request, **kw):
        n = numbers[request["seed"]]
        final = bool(request.get("evaluate_test"))
        oa = 0.4 + 0.05 * n
        return {"status": "ok", "val_oa": oa, "test_oa": oa - 0.01 if final else None, "zero_shot_oa": 0.1 + 0.01 * n,
                "history": [], "plan": request["plan"], "seconds": {}, "compression_rate": 2.0, "speedup": 1.0,
                "costs": {"params": 1e6, "nonzero_params": 5e5 - n, "macs": 1e7, "size": 4e6}}

    result = run(tiny_config(tmp_path, trials=4, final_max=1, final_pick="top", rank_sample=2, zero_shot=True,
                             latency=False), trial_fn=fake_trial)
    z = result.rank["zero_shot"]
    assert z["trials"] == 3 and z["test_oa"]["spearman"] == pytest.approx(1.0)
    assert math.isclose(z["val_oa"]["kendall"], 1.0)
    render(result)
    assert "zero-shot score (adaptive-BN validation OA before fine-tuning)" in capsys.readouterr().out


def test_the_flags_reach_the_search(tmp_path, monkeypatch):
    from search.run import build_parser, config_from_args
    from search.study import StudyConfig, prepare_study, run_study

    cfg = config_from_args(build_parser().parse_args(["--zero-shot", "--zero-shot-margin", "0.02"]))
    assert cfg.zero_shot is True and cfg.zero_shot_margin == 0.02
    assert config_from_args(build_parser().parse_args([])).zero_shot is False
    seen = []

    def fake_run(sc, **kw):
        seen.append(sc)
        raise RuntimeError("not run here")
    monkeypatch.setattr("search.driver.run", fake_run)
    config = StudyConfig.from_settings(image_size=32, networks=("resnet18",), teacher=None, repeats=1, epochs=1,
                         finetune_epochs=1,
                         rates=(2.0,), experiments=("quality",), search_trials=2, search_fidelity=1,
                         quality_methods=("search-nsga2",), search_zero_shot=True, out=str(tmp_path / "runs"),
                         progress=False, name="z")
    run_study(prepare_study(config, say=lambda m: None), say=lambda m: None)
    assert seen and seen[0].zero_shot is True
