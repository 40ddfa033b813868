"""End-to-end searches on the synthetic set (tiny) and on UC Merced (small)."""

from __future__ import annotations

import json
import math

import pytest

from tests.search.conftest import UCM, tiny_config


def test_tiny_search_end_to_end(tmp_path):
    from mlflow import MlflowClient

    from search.run import render, run
    from search.objective import evaluate_trial

    calls = []

    def flaky(request, **kw):
        """Trial 1 raises, trial 2 returns NaN: both are recorded as failed and the search goes on."""
        n = len(calls)
        calls.append(n)
        if n == 1:
            raise RuntimeError("injected fault")
        out = evaluate_trial(request, **kw)
        if n == 2:
            out["val_oa"] = math.nan
        return out

    config = tiny_config(tmp_path, trials=4, log_models=True)
    result = run(config, trial_fn=flaky)
    assert result.counts["finished"] == 4
    assert result.counts["fail"] == 2 and result.counts["complete"] == 2
    assert result.counts["inside_budget"] == result.counts["complete"]  # projection: nothing wasted
    assert result.front and result.final and result.base["test_oa"] is not None
    limit = 0.6 * result.base_costs["nonzero_params"]
    assert all(t["costs"]["nonzero_params"] <= limit for t in result.trials if t["state"] == "complete")
    assert result.hypervolume > 0

    client = MlflowClient(tracking_uri=result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    for key in ("budget", "space", "dataset", "split_hash", "sampler"):
        assert key in parent.data.params
    assert parent.data.params["budget"] == "nonzero_params<60%"
    hv = client.get_metric_history(result.parent_run_id, "hypervolume")
    assert [m.step for m in hv] == [1, 2, 3, 4]
    kids = client.search_runs([result.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert len(kids) == 4
    states = sorted(k.data.tags["state"] for k in kids)
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    pareto = [k for k in kids if k.data.tags["pareto"] == "true"]
    assert {int(k.data.tags["trial_number"]) for k in pareto} == {r["trial"] for r in result.front}
    for k in kids:
        if k.data.tags["state"] == "COMPLETE":
            assert {"val_oa", "params", "macs", "size", "latency_ms", "compression_rate", "speedup"} <= set(k.data.metrics)
            assert k.data.tags["method"] == "sparse" and k.data.tags["feasible"] == "true"
            assert any(p.startswith("prune.magnitude/") for p in k.data.params)
    arts = {a.path for a in client.list_artifacts(result.parent_run_id, "pareto")}
    assert {"pareto/front.csv", "pareto/front.json", "pareto/front.html", "pareto/front.png"} <= arts
    summary = json.loads((tmp_path / "runs" / "tiny" / "pareto" / "front.json").read_text())
    assert summary["final"][0]["test_oa"] == result.final[0]["test_oa"]
    assert result.final[0].get("model_uri", "").startswith(("runs:/", "models:/"))
    # deployable files: plan + state dict (weights_only) and ONNX, also on the parent run
    from spaces import load_compressed

    row = result.final[0]
    shipped, plan = load_compressed(row["file"])
    assert plan.steps[0].space == "prune.magnitude" and row["file"].endswith(f"models/trial-{row['trial']}.pt")
    assert row["onnx"].endswith(".onnx")
    models = {a.path for a in client.list_artifacts(result.parent_run_id, "models")}
    assert {f"models/trial-{row['trial']}.pt", f"models/trial-{row['trial']}.onnx"} <= models

    # the plan logged on the child (the projected one, with its replay record)
    plan = json.loads(open(client.download_artifacts(pareto[0].info.run_id, "plan.json", str(tmp_path))).read())
    assert plan["steps"][0]["space"] == "prune.magnitude"
    render(result)


def test_same_seed_same_plans(tmp_path):
    """One seed, same plans: the sampler is seeded and the trial function sees only JSON."""
    from search.engines.optuna_engine import OptunaEngine
    from search.run import run

    def fake_trial(request):
        steps = request["plan"]["steps"]
        kept = 1.0 - sum(steps[0]["params"]["sparsity"].values()) / max(1, len(steps[0]["params"]["sparsity"]))
        return {"status": "ok", "val_oa": 0.5 + 0.1 * kept, "plan": request["plan"],
                "costs": {"params": 1e6, "nonzero_params": 1e6 * kept, "macs": 1e7, "size": 4e6}, "seconds": {}}

    def plans(sub):
        cfg = tiny_config(tmp_path / sub, trials=4, final_max=0, sampler="nsga2")
        run(cfg, trial_fn=fake_trial)
        eng = OptunaEngine(storage=cfg.storage_url, study_name=cfg.study_name, directions=["maximize", "minimize"],
                           sampler="random", seed=0, resume=True)
        return [t.params for t in eng.study.trials]

    first = plans("a")
    assert len(first) == 4 and first == plans("b")


def test_a_resumed_search_reports_the_trials_of_every_process(tmp_path):
    """--resume: result.trials holds the earlier process's trials too (complete, pruned, failed, infeasible),
    as that process reported them, then the new ones; the count and the front agree with it."""
    from rsc.errors import BudgetInfeasible
    from search.run import run

    def fake_trial(request):
        n = len(calls)
        calls.append(n)
        if n == 1:
            raise RuntimeError("injected fault")
        if n == 2:
            raise BudgetInfeasible("cannot reach the budget")
        if n == 3:
            return {"status": "pruned", "val_oa": 0.25, "reason": "dominated"}
        return {"status": "ok", "val_oa": 0.5 + 0.01 * n, "plan": request["plan"],
                "costs": {"params": 1e6, "nonzero_params": 4e5, "macs": 1e7, "size": 4e6}, "seconds": {}}

    calls: list[int] = []
    first = run(tiny_config(tmp_path, trials=4, final_max=0), trial_fn=fake_trial)
    strip = [{k: v for k, v in r.items() if k not in ("hypervolume", "front")} for r in first.trials]
    assert [r["state"] for r in strip] == ["complete", "failed", "infeasible", "pruned"]
    second = run(tiny_config(tmp_path, trials=6, final_max=0, resume=True), trial_fn=fake_trial)
    assert second.trials[:4] == strip
    assert [r["number"] for r in second.trials] == list(range(6))
    assert [r["state"] for r in second.trials[4:]] == ["complete", "complete"]
    assert second.counts["finished"] == len(second.trials) == 6
    assert {r["trial"] for r in second.front} <= {r["number"] for r in second.trials if r["state"] == "complete"}


def test_targets_follow_the_spread_sequence_whatever_the_sampler(tmp_path):
    """--aims spread: trial i aims at spread_target(i) under any sampler; --aims sampler
    lets the sampler pick (measured: TPE then put 0 of 16 guided trials above 0.6 of the budget)."""
    from search.engines.optuna_engine import OptunaEngine
    from search.run import run
    from search.aims import spread_target

    def fake_trial(request):
        return {"status": "ok", "val_oa": 0.5, "plan": request["plan"],
                "costs": {"params": 1e6, "nonzero_params": 5e5, "macs": 1e7, "size": 4e6}, "seconds": {}}

    def targets(sub, **kw):
        cfg = tiny_config(tmp_path / sub, trials=6, final_max=0, **kw)
        run(cfg, trial_fn=fake_trial)
        eng = OptunaEngine(storage=cfg.storage_url, study_name=cfg.study_name, directions=["maximize", "minimize"],
                           sampler="random", seed=0, resume=True)
        return cfg, [t.params["target"] for t in eng.study.trials]

    for sampler in ("tpe", "random"):
        cfg, got = targets(sampler, sampler=sampler, seed=3)
        assert got == pytest.approx([spread_target(i, min_target=cfg.min_target, seed=3) for i in range(6)])
    cfg, got = targets("own", sampler="random", seed=3, aims="sampler")
    assert got != pytest.approx([spread_target(i, min_target=cfg.min_target, seed=3) for i in range(6)])
    assert all(cfg.min_target <= t <= 1.0 for t in got)


def test_spread_targets_cover_the_log_range_evenly():
    from search.aims import spread_target

    for seed in (0, 1, 7):
        u = [math.log(spread_target(i, min_target=0.1, seed=seed)) / math.log(0.1) for i in range(7)]
        assert all(0.0 <= x < 1.0 for x in u)
        assert len({int(x * 8) for x in u}) == 7  # the first 7 trials in 7 different eighths
    assert spread_target(5, min_target=1.0, seed=0) == 1.0
    assert spread_target(3, min_target=0.1, seed=0) != spread_target(3, min_target=0.1, seed=1)


@pytest.mark.slow
@pytest.mark.skipif(not UCM.is_dir(), reason=f"UC Merced not found at {UCM}")
def test_ucmerced_small(tmp_path):
    from search.run import run

    cfg = tiny_config(tmp_path, data=str(UCM), trials=2, latency=False, methods=("prune",),
                      budgets=("params<50%", "macs<80%"), objectives=("accuracy", "params"))
    result = run(cfg)
    assert result.counts["complete"] + result.counts.get("pruned", 0) == 2
    assert result.counts["inside_budget"] == result.counts["complete"]
    assert result.final and 0.0 <= result.final[0]["test_oa"] <= 1.0


def test_accuracy_floor_keeps_weak_models_off_the_front(tmp_path):
    """--min-accuracy: a tiny model at chance OA is infeasible, so the front holds only models above it."""
    from mlflow import MlflowClient

    from search.run import run

    def fake_trial(request):
        steps = request["plan"]["steps"]
        kept = 1.0 - sum(steps[0]["params"]["sparsity"].values()) / max(1, len(steps[0]["params"]["sparsity"]))
        oa = 0.3 + 0.6 * kept  # smaller is worse; the smallest fall below the floor
        return {"status": "ok", "val_oa": oa, "plan": request["plan"],
                "costs": {"params": 1e6, "nonzero_params": 1e6 * kept, "macs": 1e7, "size": 4e6}, "seconds": {}}

    cfg = tiny_config(tmp_path, trials=8, final_max=0, sampler="random", min_accuracy=0.6)
    result = run(cfg, trial_fn=fake_trial)
    oas = [t["val_oa"] for t in result.trials if t["state"] == "complete"]
    assert min(oas) < 0.6 <= max(oas)  # the floor cut something
    assert result.front and all(r["val_oa"] >= 0.6 for r in result.front)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    kids = client.search_runs([result.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    below = [k for k in kids if k.data.metrics["val_oa"] < 0.6]
    assert below and all(k.data.tags["above_accuracy_floor"] == "false" and k.data.tags["pareto"] == "false"
                         for k in below)
    assert client.get_run(result.parent_run_id).data.params["min_accuracy"] == "0.6"


def test_int8_pareto_model_ships_as_plan_file_and_pyfunc(tmp_path):
    """An int8 model has no ONNX export and no mlflow.pytorch flavour: its plan file carries it."""
    import mlflow
    import numpy as np
    import torch

    from search.run import run
    from spaces import load_compressed

    cfg = tiny_config(tmp_path, methods=("quant",), budgets=("size<50%",), objectives=("accuracy", "size"),
                      trials=1, log_models=True)
    result = run(cfg)
    row = result.final[0]
    model, plan = load_compressed(row["file"])
    assert plan.steps[-1].space == "quant.int8" and "onnx" not in row
    assert any("no ONNX file" in n for n in result.notes)
    mlflow.set_tracking_uri(result.tracking_uri)
    loaded = mlflow.pyfunc.load_model(row["model_uri"])
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded.predict(x), model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_a_floor_no_trial_reaches_says_so(tmp_path):
    import io

    from search.run import render, run

    def weak(request):
        return {"status": "ok", "val_oa": 0.2, "plan": request["plan"],
                "costs": {"params": 1e6, "nonzero_params": 5e5, "macs": 1e7, "size": 4e6}, "seconds": {}}

    result = run(tiny_config(tmp_path, trials=2, final_max=0, min_accuracy=0.5), trial_fn=weak)
    assert not result.front and result.counts["above_floor"] == 0
    out = io.StringIO()
    render(result, out)
    assert "0 of them at or above the accuracy floor 0.5" in out.getvalue()
    assert "no trial reached the accuracy floor (validation OA >= 0.5; best 0.200)" in out.getvalue()


def test_early_stop_fronts_hold_each_epochs_own_oa(tmp_path):
    """Trials are stopped against what finished trials scored after the same epoch, not their final OA.

    Here every finished trial scores 0.2-0.3 after epoch 1 and 0.8 after epoch 2 (a one-cycle
    schedule ends high); a front of final OAs would stop every new trial after its first epoch.
    """
    from search.run import run

    seen = []

    def fake_trial(request):
        seen.append(request.get("early_stop"))
        steps = request["plan"]["steps"]
        kept = 1.0 - sum(steps[0]["params"]["sparsity"].values()) / max(1, len(steps[0]["params"]["sparsity"]))
        history = [{"epoch": 1, "val_oa": 0.2 + 0.1 * kept}, {"epoch": 2, "val_oa": 0.8}]
        return {"status": "ok", "val_oa": 0.8, "history": history, "plan": request["plan"],
                "costs": {"params": 1e6, "nonzero_params": 1e6 * kept, "macs": 1e7, "size": 4e6}, "seconds": {}}

    result = run(tiny_config(tmp_path, trials=4, final_max=0, fidelity_epochs=2, early_stop_margin=0.05),
                 trial_fn=fake_trial)
    assert result.counts["complete"] == 4
    assert seen[0] is None  # nothing finished yet
    for early in seen[1:]:
        assert set(early["fronts"]) == {"1"}  # the last epoch needs no front
        assert early["margin"] == 0.05 and early["cost_keys"] == ["nonzero_params"]
        assert all(0.2 <= oa <= 0.3 for oa, _ in early["fronts"]["1"])
    assert len(seen[3]["fronts"]["1"]) >= 1
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)
    kids = client.search_runs([result.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    for k in kids:  # the per-epoch curve each trial was judged on, for the MLflow UI
        curve = sorted((m.step, m.value) for m in client.get_metric_history(k.info.run_id, "val_oa_epoch"))
        assert [s for s, _ in curve] == [1, 2] and 0.2 <= curve[0][1] <= 0.3 and curve[1][1] == 0.8

    seen.clear()
    run(tiny_config(tmp_path, trials=2, final_max=0, fidelity_epochs=1, early_stop_margin=0.05, study="one"),
        trial_fn=fake_trial)
    assert seen == [None, None]  # one epoch: nothing to stop


def test_epoch_fronts_keep_the_non_dominated_points_of_each_epoch():
    from types import SimpleNamespace

    from search.state import epoch_fronts

    def t(history, cost):
        return SimpleNamespace(val_history=history, zero_shot_oa=None, values=[history[-1] if history else 0.5, cost])

    D = ["maximize", "minimize"]
    done = [t([0.3, 0.6, 0.9], 10.0), t([0.4, 0.5, 0.8], 5.0), t([0.2, 0.4, 0.7], 6.0), t([], 1.0),
            t([0.1, float("nan"), 0.6], 2.0)]
    fronts = epoch_fronts(done, 3, D)
    assert set(fronts) == {"1", "2"}
    assert sorted(fronts["1"]) == [[0.1, 2.0], [0.4, 5.0]]  # [0.3, 10] and [0.2, 6] are dominated by [0.4, 5]
    assert sorted(fronts["2"]) == [[0.5, 5.0], [0.6, 10.0]]  # the NaN is left out
    assert epoch_fronts(done, 1, D) == {}


def test_a_trial_is_stopped_only_by_a_front_at_its_own_epoch(tmp_path):
    """The real trial function: a dominating point at epoch 1 stops it there; one at epoch 2 (final) does not."""
    from search.objective import evaluate_trial
    from search.run import run

    fronts = [{"2": [[1.5, 0.0]]}, {"1": [[1.5, 0.0]]}]

    def with_front(request, **kw):
        request["early_stop"] = {"fronts": fronts.pop(0), "directions": ["maximize", "minimize"],
                                 "cost_keys": ["nonzero_params"], "margin": 0.0}
        return evaluate_trial(request, **kw)

    result = run(tiny_config(tmp_path, trials=2, final_max=0, fidelity_epochs=2, early_stop_margin=0.0),
                 trial_fn=with_front)
    states = [t["state"] for t in result.trials]
    assert states == ["complete", "pruned"]
