"""``python -m search.study`` on the synthetic set at tiny size: structure, bookkeeping, resume, bad input.

Not accuracy: a 1-epoch base on 32 px synthetic scenes says nothing about the methods. What is checked
is that every kind of cell runs and lands at its rate, that the tables, CSVs, plots and MLflow runs
hold what the rows say, that a killed study resumes without redoing finished cells, and that bad
input fails before anything trains.
"""

from __future__ import annotations

import csv
import json

import pytest

from search.study import StudyConfig, prepare_study, run_study
from search.study.cells import Cell, plan_cells
from search.study.tables import mean_std, summarise


def tiny(tmp_path, **kw) -> StudyConfig:
    base = dict(image_size=32, networks=("resnet18",), teacher=None, repeats=2, epochs=1, finetune_epochs=1,
                rates=(2.0,), experiments=("families", "pruning"), family_methods=("magnitude", "tucker-vbmf"),
                pruning_methods=("l1",), kd=(False,), augments=("none",), search_trials=2, search_fidelity=1,
                out=str(tmp_path / "runs"), progress=False, name="tiny")
    base.update(kw)
    return StudyConfig.from_settings(base)  # the search template's fields by the study's flag names


def _rows(study_dir):
    return {p.stem: json.loads(p.read_text()) for p in (study_dir / "cells").glob("*.json")}


def test_every_kind_of_cell_runs_at_its_rate_and_lands_in_tables_csv_plots_and_mlflow(tmp_path):
    config = tiny(tmp_path, repeats=1, teacher="resnet34", experiments=("baselines", "families", "pruning", "augment"),
                  family_methods=("magnitude", "tucker-vbmf", "tucker", "tucker-searched", "distill-self",
                                  "distill-teacher"),
                  pruning_methods=("l1", "fpgm", "taylor", "sfp", "slimming", "searched"), kd=(False, True),
                  augments=("none", "d4"))
    prep = prepare_study(config, say=lambda m: None)
    res = run_study(prep, say=lambda m: None)
    rows = _rows(prep.study_dir)
    assert len(rows) == len(prep.cells) == res["finished"]
    bad = {k: r.get("reason") for k, r in rows.items() if r["status"] != "ok"}
    assert bad == {}
    for r in rows.values():
        assert 0.0 <= r["test_oa"] <= 1.0 and r["speedup"] > 0
        if r["method"] in ("magnitude", "tucker", "distill-self", "l1", "fpgm", "taylor", "sfp", "slimming"):
            # projected onto the rate from a weak start: at it, within the projection's 3% tolerance
            assert 2.0 <= r["compression_rate"] <= 2.0 / 0.97 + 0.01, r["id"]
        if r["method"] in ("searched", "tucker-searched"):
            assert r["compression_rate"] >= 2.0 * 0.999 and r["search"]["trials"] >= 2
    teacher = next(r for r in rows.values() if r["method"] == "distill-teacher")
    assert teacher["teacher"] == "resnet34" and teacher["compression_rate"] == pytest.approx(21.28 / 11.18, rel=0.02)
    mag = next(r for r in rows.values() if r["method"] == "magnitude" and not r["kd"])
    assert mag["params"] == mag["base_params"] and mag["compression_rate"] == mag["compression_rate_nonzero"]
    assert mag["sparse_size"] < mag["size"]
    # each experiment's table, from the rows
    md = (prep.study_dir / "tables.md").read_text()
    for title in ("Baselines", "Weight vs local vs global", "Pruning methods", "Augmentation ablation"):
        assert title in md
    assert "| sfp | pruning | yes | 2x |" in md and "| distill-teacher | global | yes | own |" in md
    with (prep.study_dir / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    for exp in ("families", "pruning"):
        for tag in ("rate", "speedup"):
            assert (prep.study_dir / f"{exp}-r0.8-oa-vs-{tag}.png").stat().st_size > 1000
    # one parent run, one child per cell, the tables as its artifacts
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=res["tracking_uri"])
    children = client.search_runs([client.get_run(res["parent_run_id"]).info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{res['parent_run_id']}'")
    assert sorted(c.info.run_name for c in children) == sorted(rows)
    arts = [a.path for a in client.list_artifacts(res["parent_run_id"], "study")]
    assert "study/tables.md" in arts and "study/results.csv" in arts


def test_a_killed_study_resumes_without_redoing_finished_cells(tmp_path, monkeypatch):
    import search.study.execute as execute

    config = tiny(tmp_path)
    prep = prepare_study(config, say=lambda m: None)
    ids = [c.id for c in prep.cells]
    real = execute.run_cell
    calls = []

    def killed_on_the_fourth(ws, cell):
        calls.append(cell.id)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(ws, cell)

    monkeypatch.setattr(execute, "run_cell", killed_on_the_fourth)
    res = run_study(prep, say=lambda m: None)
    assert res["interrupted"] and res["finished"] == 3
    assert sorted(_rows(prep.study_dir)) == sorted(ids[:3])
    assert (prep.study_dir / "tables.md").is_file()  # the tables of what finished are written anyway

    calls.clear()
    monkeypatch.setattr(execute, "run_cell", lambda ws, cell: calls.append(cell.id) or real(ws, cell))
    said = []
    res = run_study(prepare_study(config, say=lambda m: None), say=said.append)
    assert calls == ids[3:] and res["finished"] == len(ids) and not res["interrupted"]
    assert any("3 finished cell(s) kept" in s for s in said)
    first_parent = res["parent_run_id"]

    # a cut-short row (killed while writing) and a failed cell run again; nothing else does
    (prep.study_dir / "cells" / f"{ids[0]}.json").write_text('{"id": ')
    failed = json.loads((prep.study_dir / "cells" / f"{ids[1]}.json").read_text())
    (prep.study_dir / "cells" / f"{ids[1]}.json").write_text(json.dumps({**failed, "status": "failed"}))
    calls.clear()
    res = run_study(prepare_study(config, say=lambda m: None), say=lambda m: None)
    assert sorted(calls) == sorted(ids[:2]) and res["parent_run_id"] == first_parent

    # more cells may join a study; a setting every finished cell depends on may not change under its name
    from rsc.errors import ConfigError

    assert len(prepare_study(tiny(tmp_path, repeats=3), say=lambda m: None).cells) > len(ids)
    with pytest.raises(ConfigError, match=r"was run with finetune_epochs=1 \(now 2\).*another --name"):
        prepare_study(tiny(tmp_path, finetune_epochs=2), say=lambda m: None)
    # a search setting binds only searched cells: free while the folder holds none (tests/search/test_quality.py)
    assert prepare_study(tiny(tmp_path, search_pick="spread", search_min_target=None, search_trials=5),
                         say=lambda m: None).cells
    # a network's own lr: not changed under its finished cells, set freely for a network not trained yet
    with pytest.raises(ConfigError, match=r"the lr of resnet18=0.05 \(now 0.01\)"):
        prepare_study(tiny(tmp_path, network_lr={"resnet18": 0.01}), say=lambda m: None)
    with pytest.raises(ConfigError, match=r"the lr of resnet18=0.05 \(now 0.02\)"):
        prepare_study(tiny(tmp_path, lr=0.02), say=lambda m: None)
    grown = tiny(tmp_path, experiments=("baselines", "families", "pruning"), networks=("resnet18", "squeezenet1_1"),
                 network_lr={"squeezenet1_1": 0.01})
    assert len(prepare_study(grown, say=lambda m: None).cells) > len(ids)


def test_each_network_trains_from_scratch_at_its_own_lr(tmp_path, monkeypatch):
    from search.study.execute import Workspace

    config = tiny(tmp_path, network_lr={"squeezenet1_1": 0.01})
    assert config.lr_of("squeezenet1_1") == 0.01 and config.lr_of("resnet18") == config.lr == 0.05
    asked = []
    monkeypatch.setattr("search.base_model.obtain_base_checkpoint",
                        lambda **kw: asked.append((kw["model_name"], kw["lr"])) or (tmp_path / "x.pt", None))
    ws = Workspace(config=config, data=None, device="cpu", study_dir=tmp_path, tracking_uri="", say=lambda m: None)
    monkeypatch.setattr(ws, "split", lambda ratio, repeat: None)
    for net in ("squeezenet1_1", "resnet18"):
        ws.base_path(net, 0.8, 0, "default")
    assert asked == [("squeezenet1_1", 0.01), ("resnet18", 0.05)]


def test_a_rate_the_method_cannot_reach_is_said_in_its_cell_and_the_study_goes_on(tmp_path):
    config = tiny(tmp_path, repeats=1, rates=(2.0, 5000.0), family_methods=("tucker",), pruning_methods=())
    prep = prepare_study(config, say=lambda m: None)
    res = run_study(prep, say=lambda m: None)
    rows = _rows(prep.study_dir)
    far = next(r for r in rows.values() if r.get("target_rate") == 5000.0)
    assert far["status"] == "unreachable" and "cannot reach 5000x" in far["reason"]
    near = next(r for r in rows.values() if r.get("target_rate") == 2.0)
    assert near["status"] == "ok" and res["failed"] == []
    md = (prep.study_dir / "tables.md").read_text()
    assert "| tucker | local | no | 5000x | unreachable |" in md and "tucker at 5000x: tucker cannot reach" in md


def test_cells_are_planned_once_and_split_by_split():
    config = StudyConfig(networks=("resnet18", "vgg11"), repeats=2, rates=(2.0, 4.0), kd=(False, True),
                         family_methods=("magnitude", "tucker-vbmf", "distill-teacher"),
                         pruning_methods=("magnitude", "l1", "searched"), augments=("none", "d4"))
    cells = plan_cells(config, (0.5, 0.8))
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    shared = next(c for c in cells if c.id == "magnitude-resnet18-r0.5-x2-aug-default-s0")
    assert set(shared.experiments) == {"families", "pruning"}
    ref = next(c for c in cells if c.id == "baseline-resnet18-r0.5-aug-default-s0")
    assert set(ref.experiments) == {"baselines", "families", "pruning"}
    # the searched policy with and without KD from the base, like every pruning method
    assert {c.kd for c in cells if c.method == "searched"} == {False, True}
    assert [c for c in cells if c.method == "tucker-vbmf"][0].rate is None
    # every split's base comes before the cells that start from it, and split 0 is done first
    assert [c.repeat for c in cells] == sorted(c.repeat for c in cells)
    first = {c.repeat: i for i, c in reversed(list(enumerate(cells))) if c.method == "baseline"}
    assert all(first[c.repeat] <= i for i, c in enumerate(cells))
    per_split = len([c for c in cells if c.repeat == 0])
    # 2 ratios x (2 baselines + magnitude/l1/searched x 2 rates x 2 KD + vbmf + teacher + 2 x (base + l1))
    assert per_split == 2 * (2 + 3 * 2 * 2 + 1 + 1 + 2 * 2)


def test_the_quality_protocol_fine_tunes_every_method_alike():
    """With --search-kd the baselines distil from the base too: the same fine-tune for everything."""
    for kd in (False, True):
        config = StudyConfig.from_settings(repeats=1, rates=(4.0,), experiments=("quality",), search_kd=kd)
        cells = [c for c in plan_cells(config, (0.8,)) if c.method != "baseline"]
        assert {c.method for c in cells} == {"search-alloc", "search-alloc-random", "l1", "tucker-vbmf-scaled"}
        assert {c.kd for c in cells} == {kd}


def test_summary_groups_repeats_into_mean_and_sample_std():
    rows = [{"id": f"l1-s{i}", "method": "l1", "network": "resnet18", "kd": False, "target_rate": 2.0,
             "augment": "default", "family": "pruning", "train_ratio": 0.8, "experiments": ["pruning"],
             "status": "ok", "test_oa": oa, "compression_rate": 2.0, "speedup": 1.5, "params": 5e6}
            for i, oa in enumerate((0.80, 0.90))]
    rows.append({**rows[0], "id": "l1-s2", "status": "unreachable", "reason": "no"})
    (line,) = summarise(rows, "pruning", 0.8)
    assert (line["n"], line["of"]) == (2, 3)
    m, s = mean_std(line["oa"])
    assert m == pytest.approx(0.85) and s == pytest.approx(0.0707107, rel=1e-4)
    assert summarise(rows, "pruning", 0.5) == [] and summarise(rows, "families", 0.8) == []


def _cli(argv, capsys):
    from search.study.__main__ import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (still one line: rsc.cli.ArgumentParser)
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize("extra, pattern", [
    (["--networks", "resnet18,notanet"], "notanet"),
    (["--family-methods", "magnitude,prune-by-vibes"], "unknown prune-by-vibes"),
    (["--teacher", "resnet18", "--model", "resnet34", "--family-methods", "distill-teacher"], "is not larger than"),
    (["--rates", "1"], "compression rates must be > 1"),
    (["--rates", "two"], "comma list of float"),
    (["--kd", "maybe"], "--kd takes off, on"),
    (["--weights", "resnet18"], "--weights takes NET=PATH"),
    (["--weights", "vgg16=/nope.pt"], "--weights names network(s) the study does not train: vgg16"),
    (["--network-lr", "vgg16"], "--network-lr takes NET=LR with LR > 0, got 'vgg16'"),
    (["--network-lr", "vgg16=-1"], "--network-lr takes NET=LR with LR > 0"),
    (["--network-lr", "vgg16=0.01"], "--network-lr names network(s) the study does not train: vgg16"),
])
def test_bad_input_is_one_line_and_exit_code_2_before_anything_trains(tmp_path, capsys, extra, pattern):
    argv = ["--image-size", "32", "--networks", "resnet18", "--teacher", "none", "--repeats", "1", "--epochs", "1",
            "--out", str(tmp_path / "runs"), "--no-progress", "--plan", *extra]
    code, last = _cli(argv, capsys)
    assert code == 2 and pattern in last
    assert not (tmp_path / "runs").exists()


def test_weights_that_do_not_fit_and_too_few_images_per_class_fail_up_front(tmp_path, capsys, image_folder):
    import torch

    bad = tmp_path / "bad.pt"
    torch.save({"nothing": torch.zeros(3)}, bad)
    code, last = _cli(["--image-size", "32", "--networks", "resnet18", "--teacher", "none", "--epochs", "1",
                       "--weights", f"resnet18={bad}", "--out", str(tmp_path / "runs"), "--plan", "--no-progress"],
                      capsys)
    assert code == 2 and "bad.pt" in last
    # 10 images per class: at ratio 0.05 no class keeps a training image
    code, last = _cli(["--data", str(image_folder), "--image-size", "32", "--networks", "resnet18", "--teacher", "none",
                       "--ratios", "0.05", "--out", str(tmp_path / "runs"), "--plan", "--no-progress"], capsys)
    assert code == 2 and "training" in last


def test_plan_prints_every_cell_with_an_estimate_and_runs_nothing(tmp_path, capsys):
    from search.study.__main__ import main

    code = main(["--image-size", "32", "--networks", "resnet18", "--teacher", "none", "--repeats", "2", "--epochs", "1",
                 "--rates", "2,4", "--experiments", "families", "--family-methods", "tucker",
                 "--out", str(tmp_path / "runs"), "--no-progress", "--plan"])
    out = capsys.readouterr().out
    assert code == 0 and "6 cell(s), 0 finished" in out and "estimated" in out
    assert "tucker-resnet18-r0.8-x4-aug-default-s1" in out
    assert not (tmp_path / "runs").exists()


def test_cell_ids_name_every_coordinate():
    c = Cell("l1", "resnet18", 0.8, 2, 4.0, True, "d4+crop")
    assert c.id == "l1-resnet18-r0.8-x4-kd-aug-d4_crop-s2"
    assert Cell("baseline", "vgg16", 0.5, 0).id == "baseline-vgg16-r0.5-aug-default-s0"


def test_a_finished_cell_joins_the_tables_of_experiments_added_later(tmp_path):
    import search.study.execute as execute

    config = tiny(tmp_path, repeats=1, experiments=("families",), family_methods=("magnitude",))
    run_study(prepare_study(config, say=lambda m: None), say=lambda m: None)
    later = tiny(tmp_path, repeats=1, experiments=("baselines", "families", "pruning"), family_methods=("magnitude",),
                 pruning_methods=("magnitude",))
    calls = []
    real = execute.run_cell
    execute.run_cell = lambda ws, cell: calls.append(cell.id) or real(ws, cell)
    try:
        prep = prepare_study(later, say=lambda m: None)
        run_study(prep, say=lambda m: None)
    finally:
        execute.run_cell = real
    assert calls == []  # the base and magnitude at 2x were finished: nothing reruns
    rows = _rows(prep.study_dir)
    assert set(rows["baseline-resnet18-r0.8-aug-default-s0"]["experiments"]) == {"baselines", "families", "pruning"}
    md = (prep.study_dir / "tables.md").read_text()
    assert "| resnet18 |" in md.split("## Baselines")[1].split("##")[0]
    pruning = md.split("## Pruning methods")[1]
    assert "| magnitude | weight | no | 2x |" in pruning and ("(1/1)" in pruning or "(0/1)" in pruning)
    # a narrower run over the same folder counts its own cells, and says what else the folder holds
    res = run_study(prepare_study(tiny(tmp_path, repeats=1, experiments=("baselines",)), say=lambda m: None),
                    say=lambda m: None)
    assert (res["cells"], res["finished"], res["in_folder"]) == (1, 1, 2)


def test_the_methods_are_the_spaces_presets_and_the_studys_baselines():
    """The study's table is read from the registry (nothing under search/ names a space): the same methods,
    families and defaults as when the study kept its own table."""
    from search.study.methods import default_methods, study_methods

    methods = study_methods()
    assert list(methods) == ["magnitude", "tucker-vbmf", "tucker", "tucker-vbmf-scaled", "tucker-searched",
                             "distill-self", "distill-teacher", "l1", "fpgm", "taylor", "sfp", "slimming", "l1-params",
                             "l1-sensitivity", "searched", "search-nsga2", "search-random", "search-alloc",
                             "search-alloc-random"]
    assert default_methods("families") == ("magnitude", "tucker-vbmf", "tucker", "tucker-searched", "distill-self",
                                            "distill-teacher")
    assert default_methods("pruning") == ("magnitude", "l1", "fpgm", "taylor", "sfp", "slimming", "searched")
    assert [m.family for m in methods.values()] == ["weight"] + ["local"] * 4 + ["global"] * 2 + ["pruning"] * 8 + \
        ["search"] * 4
    # capabilities and presets, read from the spaces
    assert methods["magnitude"].rate_cost == "nonzero_params" and methods["l1"].rate_cost == "params"
    assert methods["tucker-vbmf"].fixed_rate and not methods["tucker"].fixed_rate
    assert methods["distill-self"].kd_default and not methods["l1"].kd_default
    assert (methods["sfp"].space, methods["slimming"].space) == ("prune.sfp", "prune.slimming")
    assert methods["l1-sensitivity"].preset.options == {"cost": "params", "damage": "sensitivity"}
    # a searched cell searches the spaces of presets, by their search.run names
    assert methods["searched"].search_methods == ("prune",)
    assert methods["tucker-searched"].search_methods == ("tucker",)
    assert methods["search-alloc"].search_methods == ("prune", "tucker") and methods["search-alloc"].allocate == "params"
    assert StudyConfig().methods_of("pruning") == default_methods("pruning")


def test_one_config_source_the_search_template_and_its_flags():
    import dataclasses

    from search.config import SearchConfig
    from search.study.__main__ import build_parser, config_from_args
    from search.study.config import SEARCH_FLAGS

    d = StudyConfig()
    # the template: search.run's defaults but the study's own, on purpose
    assert d.search == dataclasses.replace(SearchConfig(), trials=12, final_max=3, final_pick="top", min_target=0.9,
                                           resume=True, log_models=False, progress=False, baseline=False)
    assert (d.image_size, d.batch_size, d.finetune_lr, d.val_ratio, d.bn_batches) == \
        (SearchConfig().image_size, SearchConfig().batch_size, SearchConfig().finetune_lr, SearchConfig().val_ratio,
         SearchConfig().bn_batches)
    assert config_from_args(build_parser().parse_args([])) == d
    args = ["--search-trials", "5", "--search-fidelity", "3", "--search-final", "4", "--search-pick", "spread",
            "--search-rungs", "2", "--search-folds", "3", "--search-kd", "--search-min-target", "0.5",
            "--search-zero-shot", "--rank-sample", "2", "--slimming-reg", "1e-5", "--kd", "on", "--rates", "2,4",
            "--teacher", "none", "--network-lr", "vgg11=0.01", "--pruning-methods", "l1,sfp"]
    c = config_from_args(build_parser().parse_args(args))
    s = c.search
    assert (s.trials, s.fidelity_epochs, s.final_max, s.final_pick, s.final_rungs, s.final_folds, s.finetune_kd,
            s.min_target, s.zero_shot, s.rank_sample) == (5, 3, 4, "spread", 2, 3, True, 0.5, True, 2)
    assert (c.slimming_reg, c.kd, c.rates, c.teacher, c.network_lr, c.pruning_methods) == \
        (1e-5, (True,), (2.0, 4.0), None, {"vgg11": 0.01}, ("l1", "sfp"))
    # study.json: recorded, read back; a study recorded before the template (flat search_* keys) reads the same
    assert StudyConfig.from_settings(c.settings()) == dataclasses.replace(c, progress=True, device=None)
    flat = {**{k: v for k, v in d.settings().items() if k != "search"},
            **{key: getattr(s, flag.field) for key, flag in SEARCH_FLAGS.items()}, "search_min_target": None}
    old = StudyConfig.from_settings(flat)
    assert old.search == dataclasses.replace(s, min_target=SearchConfig().min_target)  # null: the search's own


def test_a_searched_cell_derives_its_search_from_the_template_and_reports_its_stages(tmp_path):
    from search.study.execute import _CellProgress, cell_search_config
    from search.study.methods import study_methods

    config = tiny(tmp_path, search_trials=5, search_kd=False, network_lr={"resnet18": 0.02})
    cell = Cell("search-alloc", "resnet18", 0.5, 2, 4.0, True)
    sc = cell_search_config(config, cell, study_methods()["search-alloc"], tmp_path / "tiny", "sqlite:///x.db")
    assert (sc.trials, sc.fidelity_epochs, sc.final_pick, sc.min_target) == (5, 1, "top", 0.9)  # the template's
    assert (sc.train_ratio, sc.model, sc.base_lr, sc.budgets, sc.methods, sc.allocate, sc.allocate_damage,
            sc.finetune_kd, sc.seed, sc.final_epochs, sc.study) == \
        (0.5, "resnet18", 0.02, ("params<=25%",), ("prune", "tucker"), "params", "sensitivity", True, 2, 1,
         f"tiny-{cell.id}")
    assert sc.baseline is False  # the study's l1 cell is the uniform configuration, paired on the split
    asked = tiny(tmp_path, search_baseline=True, search_baseline_compute="matched")
    sc = cell_search_config(asked, cell, study_methods()["search-alloc"], tmp_path / "tiny", "sqlite:///x.db")
    assert (sc.baseline, sc.baseline_compute) == (True, "matched")
    said = []
    bar = _CellProgress(said.append)
    bar.message("final stage: not parsed any more")
    bar.stage("final", "fine-tuning 3 best-scored model(s)")
    assert said == ["final stage: fine-tuning 3 best-scored model(s)"]


def test_a_study_recorded_before_the_template_resumes_under_the_same_settings_only(tmp_path):
    from rsc.errors import ConfigError
    from search.study.methods import study_methods
    from search.study.runner import _check_resumable

    folder = tmp_path / "old"
    (folder / "cells").mkdir(parents=True)
    settings = {k: v for k, v in StudyConfig().settings().items() if k != "search"}
    settings.update(search_trials=24, search_fidelity=2, search_final=3, search_pick="top", search_rungs=1,
                    search_kd=False, search_min_target=0.9, search_folds=0, search_zero_shot=False, rank_sample=0,
                    slimming_reg=0.0001)  # as studies recorded them before
    (folder / "study.json").write_text(json.dumps({"settings": settings, "dataset": "synthetic"}))
    (folder / "cells" / "a.json").write_text(json.dumps({"id": "a", "status": "ok", "method": "searched",
                                                         "network": "resnet18"}))
    methods = study_methods()
    same = StudyConfig.from_settings(search_trials=24)
    _check_resumable(folder, same, "synthetic", methods)   # slimming_reg left to the space: its 1e-4
    with pytest.raises(ConfigError, match=r"search_trials=24 \(now 12\)"):
        _check_resumable(folder, StudyConfig(), "synthetic", methods)
    with pytest.raises(ConfigError, match=r"slimming_reg=0.0001 \(now 0.001\)"):
        _check_resumable(folder, StudyConfig.from_settings(search_trials=24, slimming_reg=1e-3), "synthetic", methods)
