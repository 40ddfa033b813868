"""--final-folds: the final choice cross-validated over folds of the training part, each fold scored by a model
whose base never saw it. Bookkeeping, not accuracy (synthetic 32 px scenes, one epoch)."""

from __future__ import annotations

import pytest

from rsc.errors import ConfigError
from tests.search.conftest import tiny_config


@pytest.fixture(scope="module")
def scenes():
    from rsc.scenes import synthetic_scene_data
    from rsc.splits import make_split

    data = synthetic_scene_data(num_classes=4, per_class=25, image_size=16)
    return data, make_split(data, train_ratio=0.8, val_ratio=0.1, seed=3)


def test_the_folds_partition_the_training_part_by_class_and_leave_the_test_part_alone(scenes):
    from rsc.splits import fold_split

    data, split = scenes
    training = set(split.train.tolist()) | set(split.val.tolist())
    folds = [fold_split(data, split, folds=3, fold=i) for i in range(3)]
    held = [set(f.val.tolist()) for f in folds]
    assert set().union(*held) == training and sum(len(h) for h in held) == len(training)  # each image once
    for f, h in zip(folds, held):
        assert set(f.train.tolist()) == training - h and f.test.tolist() == split.test.tolist()
        for c in range(data.num_classes):  # stratified: 20 training images of a class dealt 7/7/6
            assert sum(int(data.labels[i]) == c for i in h) in (6, 7)
    assert len({split.digest, *(f.digest for f in folds)}) == 4      # a base is cached per fold
    assert fold_split(data, split, folds=3, fold=1).digest == folds[1].digest  # seeded: the same folds again
    with pytest.raises(ConfigError, match="at least 2 folds"):
        fold_split(data, split, folds=1, fold=0)
    with pytest.raises(ConfigError, match="not one of 0..2"):
        fold_split(data, split, folds=3, fold=3)
    with pytest.raises(ConfigError, match="fewer than 30 folds"):
        fold_split(data, split, folds=30, fold=0)


def test_a_fold_rebuilds_the_final_architecture_with_the_choices_of_its_own_base():
    from search.crossval import fold_plan

    plan = {"base": {"model": "resnet18"}, "steps": [
        {"space": "prune.allocated", "params": {"keep": 0.3}, "options": {"cost": "params"},
         "record": {"params": {"ratios": [0.5, 0.7]}, "inner": {"history": [["layer1", True, [0, 3]]]},
                    "cost": "params"}},
        {"space": "tucker", "params": {"ranks": [0.5]}, "record": {"ranks": [[4, 4]]}},
        {"space": "sparse", "params": {"sparsity": 0.5}}]}
    out = fold_plan(plan)
    assert out["steps"][0]["record"] == {"params": {"ratios": [0.5, 0.7]}, "cost": "params"}  # the allocation kept
    assert "record" not in out["steps"][1] and "record" not in out["steps"][2]
    assert [s["params"] for s in out["steps"]] == [s["params"] for s in plan["steps"]]
    assert "inner" in plan["steps"][0]["record"]  # the trial's own plan untouched


def test_the_chosen_model_is_the_best_cross_validated_oa_each_fold_scored_from_its_own_base(tmp_path, capsys):
    from rsc.scenes import load_scene_data
    from rsc.splits import make_split
    from search.objective import evaluate_trial
    from search.report import render
    from search.request import trial_seed
    from search.run import run

    config = tiny_config(tmp_path, methods=("prune",), allocate="params", budgets=("params<60%",),
                         objectives=("accuracy", "params"), trials=3, final_pick="top", final_max=2, final_folds=2)
    calls, final_val = [], {}
    numbers = {trial_seed(config.seed, n): n for n in range(100)}  # the final stage's seed of a trial

    def spy(request, **kw):
        out = evaluate_trial(request, **kw)
        calls.append(request)
        number = numbers[request["seed"]]
        if request.get("evaluate_test"):
            final_val[number] = out["val_oa"]
        elif request["data"].get("fold"):  # the folds favour the finalist with the lower validation OA
            out["val_oa"] = 0.9 if number == min(final_val, key=lambda n: (final_val[n], -n)) else 0.2
        return out

    result = run(config, trial_fn=spy)
    folds = [r for r in calls if r["data"].get("fold")]
    assert len(result.final) == 2 and len(folds) == 4 and len(final_val) == 2   # 2 models x 2 folds, after them
    assert calls.index(folds[0]) > max(i for i, r in enumerate(calls) if r.get("evaluate_test"))
    main = {r["base_checkpoint"] for r in calls if not r["data"].get("fold")}
    bases = {r["data"]["fold"][1]: r["base_checkpoint"] for r in folds}
    assert len(main) == 1 and len(set(bases.values())) == 2 and not main & set(bases.values())
    for r in folds:
        assert r["evaluate_test"] is False and r["latency"] is False and r["epochs"] == config.final_epochs
        assert r["limits"] == {} and "inner" not in r["plan"]["steps"][0]["record"]  # the allocation, not the channels
    data = load_scene_data(None, image_size=32, progress=False)
    split = make_split(data, train_ratio=config.train_ratio, val_ratio=config.val_ratio, seed=config.data_seed)
    for row in result.final:  # every training image held out once
        assert len(row["cv_fold_oa"]) == 2 and row["cv_images"] == len(split.train) + len(split.val)
    favoured = min(final_val, key=lambda n: (final_val[n], -n))
    assert result.chosen["trial"] == favoured and result.chosen["cv_oa"] == pytest.approx(0.9)
    render(result)
    assert "cross-validated over 2 folds of the training part" in capsys.readouterr().out


def test_final_folds_refused_for_bad_counts_and_for_a_base_that_saw_every_fold(tmp_path):
    from rsc.checkpoint import save_checkpoint
    from rsc.scenes import synthetic_scene_data
    from rsc.splits import make_split
    from rsc.models import create_model
    from search.run import run

    with pytest.raises(ConfigError, match="final_folds must be 0"):
        tiny_config(tmp_path, final_folds=1)
    data = synthetic_scene_data(num_classes=8, per_class=60, image_size=32)
    ckpt = tmp_path / "trained.pt"
    save_checkpoint(ckpt, create_model("resnet18", 8, image_size=32),
                    arch={"model": "resnet18", "num_classes": 8, "image_size": 32}, classes=data.classes,
                    split=make_split(data, train_ratio=0.5).info())
    with pytest.raises(ConfigError, match="its folds would be scored on images it saw"):
        run(tiny_config(tmp_path, final_folds=2, weights=str(ckpt)))
    with pytest.raises(ConfigError, match="fewer than 100 folds"):
        run(tiny_config(tmp_path, final_folds=100, study="many"))


@pytest.mark.parametrize("argv, pattern", [
    (["-m", "search.run", "--final-folds", "1"], "final_folds must be 0 (off) or at least 2"),
    (["-m", "search.study", "--search-folds", "1", "--plan"], "--search-folds must be 0 (off) or at least 2"),
])
def test_bad_fold_counts_on_the_command_line_are_one_line_and_exit_code_2(tmp_path, argv, pattern):
    import subprocess
    import sys

    from tests.search.conftest import ROOT, child_env

    proc = subprocess.run([sys.executable, *argv, "--out", str(tmp_path / "runs")], cwd=ROOT, capture_output=True,
                          text=True, env=child_env(tmp_path / "cache"), timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error:") and pattern in last and "Traceback" not in proc.stderr
