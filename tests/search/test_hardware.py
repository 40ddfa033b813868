"""--target in a search: trials measure latency on it, and it is recorded on every run and final model."""

from __future__ import annotations

import io
import json

import pytest

from tests.search.conftest import tiny_config

ONNX = "cpu:runtime=onnxruntime"


def _children(result):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=result.tracking_uri)
    kids = client.search_runs([result.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    return client, kids


@pytest.mark.timeout(600)
def test_search_on_onnxruntime_records_the_target_everywhere(tmp_path):
    pytest.importorskip("onnxruntime")
    import optuna
    import torch

    from rsc.errors import ConfigError
    from search.run import render, run
    from spaces import load_compressed

    config = tiny_config(tmp_path, trials=1, hardware=ONNX)
    result = run(config)
    assert result.counts["complete"] == 1 and result.hardware == ONNX
    assert result.hardware_fingerprint["runtime"] == "onnxruntime" and result.hardware_fingerprint["onnxruntime"]

    study = optuna.load_study(study_name=config.study_name, storage=config.storage_url)
    assert study.user_attrs["hardware"] == ONNX
    for t in study.trials:
        assert t.user_attrs["costs"]["latency_ms"] > 0
    client, kids = _children(result)
    assert len(kids) == 1 and {k.data.tags["hardware"] for k in kids} == {ONNX}
    assert all(k.data.metrics["latency_ms"] > 0 and k.data.metrics["speedup"] > 0 for k in kids)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["hardware"] == ONNX and parent.data.tags["hardware"] == ONNX
    assert parent.data.params["hardware_device"] and parent.data.metrics["base_latency_ms"] > 0
    with open(client.download_artifacts(result.parent_run_id, "hardware.json", str(tmp_path))) as fh:
        fp = json.load(fh)
    assert fp["spec"] == ONNX and fp["provider"] == "CPUExecutionProvider"

    (row,) = result.final
    assert row["hardware"] == ONNX and row["latency_ms"] > 0 and result.base["latency_ms"] > 0
    blob = torch.load(row["file"], weights_only=True)
    extra = json.loads(blob["extra"])
    assert extra["hardware"] == ONNX and extra["hardware_fingerprint"]["spec"] == ONNX
    load_compressed(row["file"])  # the plan file still loads

    out = io.StringIO()
    render(result, out)
    text = out.getvalue()
    assert "latency and speed-up measured on this machine's CPU" in text and f"--target {ONNX}" in text
    assert f"(latency_ms and speedup on --target {ONNX}):" in text

    with pytest.raises(ConfigError, match=r"measured latency on --target cpu:runtime=onnxruntime; resuming it on cpu"):
        run(config.replace(resume=True, hardware="cpu"))


def test_search_with_a_ray_target_measures_there(tmp_path, private_ray, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    from search.run import run

    result = run(tiny_config(tmp_path, trials=1, final_epochs=0, hardware="ray:target-test"))
    assert private_ray.is_initialized()  # the test's instance: the search did not connect, so it leaves it
    assert result.counts["complete"] == 1 and result.hardware_fingerprint["remote"] == "target-test"
    _, kids = _children(result)
    assert [k.data.tags["hardware"] for k in kids] == ["ray:target-test"] and kids[0].data.metrics["latency_ms"] > 0
