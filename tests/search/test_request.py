"""The trial request and result types (search.request): plain-JSON round trips, one source of defaults,
the trial seed, and the final stage's request differing from the trial's only where it should."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from search.config import SearchConfig
from search.engines.base import TrialRecord
from search.final import final_request
from search.request import DataRef, EarlyStop, TrialRequest, TrialResult, trial_seed

PLAN = {"base": {"model": "resnet18", "num_classes": 8, "image_size": 32},
        "steps": [{"space": "prune.channel", "params": {"criterion": "l1", "ratios": {"bin0": 0.3}}}]}


def _template() -> TrialRequest:
    """As search.setup.prepare builds it: no plan, no seed yet."""
    data = DataRef(path=None, dataset=None, image_size=32, train_ratio=0.8, val_ratio=0.1, split_seed=0,
                   digest="9af1ddde76531b04")
    return TrialRequest(data=data, base_checkpoint="/cache/base.pt", limits={"params": 2.8e6},
                        base_costs={"params": 11180616.0, "macs": 37015552.0}, epochs=2, lr=0.01, batch_size=64,
                        device="cpu", calibration_batches=2, bn_batches=4, latency=True, hardware="cpu",
                        zero_shot=True)


def _trial_request(template: TrialRequest, seed: int = 3, number: int = 5) -> TrialRequest:
    """As search.driver.run makes a trial's."""
    early = EarlyStop(fronts={"1": [[0.8, 1.0e6]], "0": [[0.4, 2.0e6]]}, directions=("maximize", "minimize"),
                      cost_keys=("params",), margin=0.1, zero_shot_margin=0.05)
    return template.replace(plan=PLAN, target={"params": 1.4e6}, seed=trial_seed(seed, number), early_stop=early)


def test_a_request_travels_as_plain_json_and_comes_back_equal():
    request = _trial_request(_template())
    request = request.replace(data=dataclasses.replace(request.data, fold=(5, 2), file="/node/cache/set.pt"))
    wire = request.to_dict()
    assert json.loads(json.dumps(wire)) == wire  # plain JSON: what an executor ships
    assert wire["data"]["fold"] == [5, 2] and wire["early_stop"]["cost_keys"] == ["params"]
    assert TrialRequest.from_dict(wire) == request
    assert TrialRequest.from_json(request.to_json()) == request
    assert TrialRequest.from_dict(_template().to_dict()) == _template()


def test_a_result_travels_as_plain_json_and_comes_back_equal():
    result = TrialResult(status="ok", val_oa=0.78125, test_oa=0.84375, costs={"params": 1143680.0, "latency_ms": 0.4},
                         compression_rate=9.776, speedup=math.inf, base_latency_ms=1.9, hardware="cpu", plan=PLAN,
                         projection=1.25, history=({"epoch": 1, "val_oa": 0.5}, {"epoch": 2, "val_oa": 0.78125}),
                         epochs_run=2, seconds={"load": 0.5, "total": 3.0}, zero_shot_oa=0.25,
                         worker={"host": "n1", "pid": 7})
    assert TrialResult.from_dict(result.to_dict()) == result
    assert TrialResult.from_json(result.to_json()) == result
    assert result.curve == [0.5, 0.78125]
    pruned = TrialResult(status="pruned", val_oa=0.1, epochs_run=0, screened=True, reason="screened")
    assert TrialResult.from_dict(pruned.to_dict()) == pruned
    # a test's fake trial function answers a few keys only: the rest are the defaults
    assert TrialResult.from_dict({"status": "pruned", "val_oa": 0.25}).costs == {}


def test_an_unknown_key_is_refused_by_name():
    with pytest.raises(ValueError, match="'epoch'"):
        TrialRequest.from_dict({**_template().to_dict(), "epoch": 3})
    with pytest.raises(ValueError, match="'val_acc'"):
        TrialResult.from_dict({"status": "ok", "val_acc": 0.5})


def test_defaults_are_the_search_configs():
    c = SearchConfig()
    r = TrialRequest(data=DataRef(), base_checkpoint="base.pt")
    assert (r.epochs, r.lr, r.batch_size, r.seed) == (c.fidelity_epochs, c.finetune_lr, c.batch_size, c.seed)
    assert (r.calibration_batches, r.bn_batches, r.latency, r.hardware) == (
        c.calibration_batches, c.bn_batches, c.latency, c.hardware)
    assert (r.finetune_kd, r.zero_shot) == (c.finetune_kd, c.zero_shot)
    assert EarlyStop().margin == c.early_stop_margin
    assert (r.data.image_size, r.data.train_ratio, r.data.val_ratio) == (c.image_size, c.train_ratio, c.val_ratio)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = 1  # type: ignore[misc]


def test_trial_seed_gives_every_trial_of_every_search_its_own_seed():
    assert trial_seed(0, 7) == 7 and trial_seed(1, 0) == 100003
    seeds = {trial_seed(s, n) for s in range(5) for n in range(1000)}
    assert len(seeds) == 5000


def test_the_final_request_differs_from_the_trials_only_where_it_should():
    template = _template()
    trial = _trial_request(template, seed=3, number=5)
    done_plan = {**PLAN, "steps": [{**PLAN["steps"][0], "record": {"kept": {"layer1": [0, 2]}}}]}
    record = TrialRecord(number=5, state="complete", values=(0.8, 1.2e6), plan=done_plan, method="prune")
    final = final_request(template, record, seed=3, epochs=20, evaluate_test=True)
    a, b = trial.to_dict(), final.to_dict()
    changed = {k for k in a if a[k] != b[k]}
    # the plan as compressed (with its records) from the base, unprojected, longer, unscreened, tested
    assert changed == {"plan", "limits", "target", "epochs", "early_stop", "zero_shot", "evaluate_test"}
    assert b["plan"] == done_plan and b["limits"] == {} and b["target"] == {} and b["early_stop"] is None
    assert b["seed"] == a["seed"] == trial_seed(3, 5)  # the trial's own batches again
    assert (b["epochs"], b["zero_shot"], b["evaluate_test"]) == (20, False, True)
    rung = final_request(template, record, seed=3, epochs=5, evaluate_test=False, latency=False)
    assert {k for k in b if b[k] != rung.to_dict()[k]} == {"epochs", "evaluate_test", "latency"}
