"""Model factory: names, heads, small inputs, local weights."""

from __future__ import annotations

import pytest
import torch

from rsc.checkpoint import save_checkpoint
from rsc.errors import ModelError
from rsc.models import create_model, list_models

FEATURED = ["alexnet", "vgg11", "vgg16_bn", "googlenet", "squeezenet1_1", "resnet18", "resnet50",
            "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0"]


@pytest.mark.parametrize("name", FEATURED)
def test_featured_models_take_32px_and_size_their_head(name):
    model = create_model(name, 7, image_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)


def test_every_torchvision_classifier_is_listed():
    names = list_models()
    assert {"resnet101", "mobilenet_v3_large", "convnext_tiny"} <= set(names)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ModelError, match=r"unknown model 'resnet19' \(did you mean .*resnet18.*known models:"):
        create_model("resnet19", 10)


def test_local_weights_load_and_head_is_replaced(tmp_path):
    source = create_model("resnet18", 45)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", 21, weights=tmp_path / "r18.pth")
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 21
    save_checkpoint(tmp_path / "ckpt.pt", source, arch={"model": "resnet18", "num_classes": 45, "image_size": 64},
                    classes=[str(i) for i in range(45)], split={})
    from_ckpt = create_model("resnet18", 21, weights=tmp_path / "ckpt.pt")
    assert torch.equal(from_ckpt.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(create_model("mobilenet_v2", 10).state_dict(), tmp_path / "m.pth")
    with pytest.raises(ModelError, match="do not fit resnet18"):
        create_model("resnet18", 10, weights=tmp_path / "m.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("resnet18", 10, weights=tmp_path / "junk.pth")
    with pytest.raises(ModelError, match="not found"):
        create_model("resnet18", 10, weights=tmp_path / "missing.pth")
