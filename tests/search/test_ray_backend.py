"""The Ray backend: a tiny search whose trials run as Ray tasks, two at a time, on a private instance."""

from __future__ import annotations

import itertools

import pytest

from tests.search.conftest import tiny_config

ray = pytest.importorskip("ray")


@pytest.mark.timeout(600)
def test_search_on_ray_runs_trials_side_by_side(tmp_path):
    import optuna
    from mlflow import MlflowClient

    from search.run import run

    config = tiny_config(tmp_path, trials=4, backend="ray", workers=2, trial_cpus=1, final_epochs=0)
    result = run(config)
    assert not ray.is_initialized()  # the private instance is shut down
    assert result.counts["finished"] == 4 and result.counts["complete"] == 4
    assert result.counts["inside_budget"] == 4 and result.front

    study = optuna.load_study(study_name=config.study_name, storage=config.storage_url)
    workers = [t.user_attrs["worker"] for t in study.trials]
    assert len({w["pid"] for w in workers}) == 2  # two worker processes, not the driver
    assert any(a["start"] < b["end"] and b["start"] < a["end"]  # and at least two trials overlapped
               for a, b in itertools.combinations(workers, 2))

    client = MlflowClient(tracking_uri=result.tracking_uri)
    kids = client.search_runs([result.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    assert len(kids) == 4 and all(":" in k.data.tags["worker"] for k in kids)
    assert sorted(int(k.data.tags["trial_number"]) for k in kids) == [0, 1, 2, 3]


@pytest.mark.timeout(600)
def test_ctrl_c_on_ray_marks_the_trials_in_flight_interrupted_and_resume_finishes(tmp_path, monkeypatch):
    """Ctrl-C while two trials run: the finished one is kept, the two in flight are cancelled and
    marked interrupted (not counted), and --resume reaches --trials."""
    import optuna

    from search.executors import RayExecutor
    from search.run import run

    real_next = RayExecutor.next
    calls = []

    def next_then_ctrl_c(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(RayExecutor, "next", next_then_ctrl_c)
    config = tiny_config(tmp_path, trials=3, backend="ray", workers=2, trial_cpus=1, final_epochs=0)
    first = run(config)
    assert first.interrupted and not ray.is_initialized()
    study = optuna.load_study(study_name=config.study_name, storage=config.storage_url)
    states = [(t.state.name, t.user_attrs.get("interrupted", False)) for t in study.trials]
    assert sorted(states) == [("COMPLETE", False), ("FAIL", True), ("FAIL", True)]

    monkeypatch.setattr(RayExecutor, "next", real_next)
    second = run(tiny_config(tmp_path, trials=3, backend="ray", workers=2, trial_cpus=1, final_epochs=0, resume=True))
    assert not second.interrupted and second.counts["complete"] == 3 and second.counts["interrupted"] == 2


@pytest.mark.timeout(600)
def test_a_trial_lost_on_every_attempt_is_named_and_replaced(tmp_path):
    """Trial 1's worker dies on both attempts: it is marked lost (not counted, not on the front), the
    search asks another trial and still ends with --trials finished, and the summary names it."""
    import optuna
    from mlflow import MlflowClient

    from search.run import render, run
    from tests.search.cluster_trials import dies_on_trial_one

    config = tiny_config(tmp_path, trials=3, backend="ray", workers=2, trial_cpus=1, final_epochs=0,
                         trial_retries=1)
    result = run(config, trial_fn=dies_on_trial_one)
    assert result.counts["finished"] == 3 and result.counts["complete"] == 3 and result.counts["lost"] == 1

    study = optuna.load_study(study_name=config.study_name, storage=config.storage_url)
    lost = [t for t in study.trials if t.user_attrs.get("lost")]
    assert [t.number for t in lost] == [1] and lost[0].state.name == "FAIL"
    assert "lost 2 time(s)" in lost[0].user_attrs["lost"] and "WorkerCrashedError" in lost[0].user_attrs["lost"]
    assert sorted(t.number for t in study.trials if t.state.name == "COMPLETE") == [0, 2, 3]

    run1 = MlflowClient(tracking_uri=result.tracking_uri).get_run(lost[0].user_attrs["mlflow_run_id"])
    assert run1.info.status == "KILLED" and run1.data.tags["state"] == "LOST" and run1.data.tags["attempts"] == "2"

    import io

    out = io.StringIO()
    render(result, out)
    text = out.getvalue()
    assert "1 lost with their workers" in text and "trial 1: lost 2 time(s)" in text
