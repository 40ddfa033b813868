"""Compressed models that mlflow.pytorch cannot serialise (int8) still become MLflow models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spaces import Context, Plan, Step, compress, save_compressed
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


def test_int8_model_is_logged_as_pyfunc_and_predicts_the_same(int8_model, tmp_path, monkeypatch):
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
    uri = tracker.log_compressed_model(parent, path, "pareto-trial-0", input_example=x[:1], metadata={"trial": 0})
    mlflow.set_tracking_uri(tracker.uri)  # a user points MLflow at the same store (MLFLOW_TRACKING_URI)
    loaded = mlflow.pyfunc.load_model(uri)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(loaded.predict(x), expected, rtol=1e-5, atol=1e-5)


def test_missing_file_is_a_clear_error(tmp_path):
    from spaces import SpaceError, load_compressed

    with pytest.raises(SpaceError, match="not found"):
        load_compressed(tmp_path / "nope.pt")
