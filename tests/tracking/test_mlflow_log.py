from __future__ import annotations

import json
import os
import socket

import pytest

from tracking.errors import TrackingError
from tracking.mlflow_log import PARENT_TAG, Tracker, _fluent_uri, check_tracking_uri, default_tracking_uri, flatten_params


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_names_uri():
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")):
        check_tracking_uri(uri, timeout=2)


def test_uri_without_scheme():
    with pytest.raises(TrackingError, match="no scheme"):
        check_tracking_uri("localhost:5000")


def test_flatten_params():
    plan = {"base": {"model": "resnet18"}, "steps": [
        {"space": "prune.channel", "params": {"criterion": "l1", "ratios": {"layer1.0.conv1": 0.5}}, "record": {"x": 1}},
        {"space": "quant.int8", "params": {"per_channel": True}}]}
    flat = flatten_params(plan)
    assert flat["base/model"] == "resnet18"
    assert flat["prune.channel/ratios/layer1.0.conv1"] == "0.5"
    assert flat["step1"] == "quant.int8" and flat["quant.int8/per_channel"] == "True"
    assert not any("record" in k for k in flat)


def test_parent_children_and_pareto_tags(tmp_path):
    uri = default_tracking_uri(tmp_path)
    check_tracking_uri(uri)
    tr = Tracker(uri=uri, experiment="t", artifact_location=(tmp_path / "art").as_uri())
    parent = tr.start_parent("study", params={"budget": "params<5M", "sampler": "nsga2"}, tags={"study": "s"})
    kids = []
    for n in range(3):
        rid = tr.start_trial(parent, n, tags={"method": "prune"})
        tr.finish_trial(rid, plan={"base": {"model": "m"}, "steps": [{"space": "prune.channel", "params": {"r": n}}]},
                        metrics={"val_oa": 0.5 + n / 10, "params": 1e6, "bad": float("nan")},
                        tags={"feasible": "true"})
        kids.append(rid)
    assert tr.update_pareto({kids[0]: True, kids[1]: True, kids[2]: False}) == 2
    assert tr.update_pareto({kids[0]: False, kids[1]: True, kids[2]: True}) == 2  # only changes are written
    tr.log_metrics(parent, {"hypervolume": 0.3}, step=3)
    tr.end_parent(parent)
    found = tr.client.search_runs([tr.experiment_id], filter_string="tags.pareto = 'true'")
    assert {r.info.run_id for r in found} == {kids[1], kids[2]}
    children = tr.children(parent)
    assert len(children) == 3 and all(c.data.tags[PARENT_TAG] == parent for c in children)
    run = tr.client.get_run(kids[2])
    assert run.data.params["prune.channel/r"] == "2" and "bad" not in run.data.metrics
    plan = json.loads((tmp_path / "art" / kids[2] / "artifacts" / "plan.json").read_text())
    assert plan["steps"][0]["params"] == {"r": 2}
    # a second tracker (another process) sees the flags when it resumes the parent
    tr2 = Tracker(uri=uri, experiment="t")
    tr2.resume_parent(parent)
    assert tr2.update_pareto({kids[0]: False, kids[1]: True, kids[2]: True}) == 0


def test_pytorch_model_logged_with_a_batch_of_one_takes_any_batch(tmp_path, capfd, monkeypatch):
    import mlflow
    import numpy as np
    import torch

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2)).eval()
    tr = Tracker(uri=default_tracking_uri(tmp_path), experiment="t", artifact_location=(tmp_path / "art").as_uri())
    parent = tr.start_parent("study", params={})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tr.log_model(parent, model, "m", input_example=np.zeros((1, 3, 16, 16), np.float32))
    # torch.export specialises a batch of one (and says so): the saved graph would take only that
    assert "specialized" not in capfd.readouterr().err
    # MLflow's fluent API is left as it was: no $MLFLOW_TRACKING_URI (MLflow's relative default) for
    # the next search of the process to take for the user's
    assert "MLFLOW_TRACKING_URI" not in os.environ
    with _fluent_uri(tr.uri):
        loaded = mlflow.pyfunc.load_model(uri)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=1e-5, atol=1e-5)


def test_artifacts_beside_the_sqlite_database_whoever_creates_the_experiment(tmp_path, monkeypatch):
    """A study's search cell may create the search experiment first (its own output folder is the
    study's): the experiment's artifacts still go beside the database, where a later search of its
    own looks for them, and not into that study's folder nor MLflow's working-directory default."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    uri = default_tracking_uri(tmp_path / "runs")
    check_tracking_uri(uri)
    first = Tracker(uri=uri, experiment="search")
    location = first.client.get_experiment(first.experiment_id).artifact_location
    assert location == (tmp_path / "runs" / "mlartifacts").as_uri()
    run = first.start_parent("s", params={})
    first.log_text(run, "x", "a.txt")
    assert (tmp_path / "runs" / "mlartifacts").is_dir() and not (tmp_path / "elsewhere" / "mlartifacts").exists()
    # an explicit location still wins for a new experiment
    other = Tracker(uri=uri, experiment="other", artifact_location=(tmp_path / "art").as_uri())
    assert other.client.get_experiment(other.experiment_id).artifact_location == (tmp_path / "art").as_uri()
