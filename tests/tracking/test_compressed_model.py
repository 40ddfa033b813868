"""Compressed models that mlflow.pytorch cannot serialise (int8) still become MLflow models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from spaces import Context, Plan, Step, compress, save_compressed
from tests.conftest import REPO
from tracking.mlflow_log import Tracker

SIZE, CLASSES = 32, 4


@pytest.fixture()
def int8_model(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    calib = [(torch.randn(4, 3, SIZE, SIZE), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    ctx = Context(num_classes=CLASSES, image_size=SIZE, calibration=calib)
    base = {"model": "squeezenet1_1", "num_classes": CLASSES, "image_size": SIZE}
    plan = Plan(base=base, steps=(Step(space="prune.magnitude", params={"sparsity": {"features.0": 0.5}}),
                                  Step(space="quant.int8", params={})))
    from spaces.compose import create_base

    model, done = compress(create_base(plan).eval(), plan, ctx)
    return model, save_compressed(tmp_path / "trial-0.pt", model, done)


def test_int8_model_is_logged_as_pyfunc_and_predicts_the_same(int8_model, tmp_path, monkeypatch, capfd):
    import mlflow
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    model, path = int8_model
    tracker = Tracker(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t",
                      artifact_location=(tmp_path / "art").as_uri())
    parent = tracker.start_parent("study", params={})
    x = np.random.default_rng(0).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    with pytest.raises(Exception):  # noqa: B017 - what the fallback is for
        tracker.log_model(parent, model, "native", input_example=x[:1])
    capfd.readouterr()
    uri = tracker.log_compressed_model(parent, path, "pareto-trial-0", input_example=x[:1], metadata={"trial": 0})
    assert "CloudPickle" not in capfd.readouterr().err  # MLflow's warning on a pickled python_model
    mlflow.set_tracking_uri(tracker.uri)  # a user points MLflow at the same store (MLFLOW_TRACKING_URI)
    assert "model_code_path" in mlflow.models.get_model_info(uri).flavors["python_function"]  # code, no pickle
    loaded = mlflow.pyfunc.load_model(uri)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=1e-5, atol=1e-5)


def test_missing_file_is_a_clear_error(tmp_path):
    from spaces import SpaceError, load_compressed

    with pytest.raises(SpaceError, match="not found"):
        load_compressed(tmp_path / "nope.pt")


def test_the_model_class_gives_mlflow_no_cause_to_warn():
    # a PythonModel whose ``predict`` has no type hints makes MLflow warn when the class is defined
    # (a warning MLflow itself filters to "once": a fresh process shows whether it comes)
    result = subprocess.run([sys.executable, "-c", "import tracking.compressed_model"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "type hints" not in result.stderr, result.stderr
