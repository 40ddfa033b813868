"""ONNX export: same logits as torch at any batch size; models the exporter refuses say why."""

from __future__ import annotations

import pytest
import torch

from spaces import Context, export_onnx, get_space
from tests.spaces.conftest import NUM_CLASSES, SIZE

ort = pytest.importorskip("onnxruntime")


def test_tucker_model_exports_with_a_dynamic_batch(resnet18, ctx, tmp_path):
    model = get_space("decompose.tucker").apply(resnet18, {"conv": {"layer4.1.conv2": [0.5, 0.5]}, "round_to": 8}, ctx)
    assert export_onnx(model, tmp_path / "m.onnx", image_size=SIZE) is None
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # weights inside: one file to ship
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE)
        (y,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(y), model(x), atol=1e-4, rtol=1e-4)
    assert y.shape == (3, NUM_CLASSES)


def test_int8_model_is_refused_with_a_reason_and_no_file(resnet18, tmp_path):
    calib = [(torch.randn(4, 3, SIZE, SIZE), torch.zeros(4, dtype=torch.long))]
    model = get_space("quant.int8").apply(resnet18, {}, Context(num_classes=NUM_CLASSES, image_size=SIZE,
                                                               calibration=calib))
    why = export_onnx(model, tmp_path / "q.onnx", image_size=SIZE)
    assert why and "\x1b" not in why and "int8" in why
    assert not (tmp_path / "q.onnx").exists()
