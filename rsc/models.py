"""torchvision classifiers by name, with the head sized to the dataset and small inputs allowed.

``create_model`` is the one entry point (as timm's): the same ``(name, num_classes, image_size)``
always builds the same architecture, which is what lets a compression plan rebuild a model
anywhere. Pretrained weights come from a local file (``weights=PATH``: a torchvision state dict
or one of our checkpoints, read with ``weights_only=True``) or, for users with internet, from
torchvision's hub (``weights="imagenet"``); the classifier head is always replaced.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from rsc.errors import ModelError
from rsc.files import read_torch_file

# Architectures the RS compression literature uses; any other torchvision classifier works too.
FEATURED = (
    "alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "googlenet", "squeezenet1_1",
    "resnet18", "resnet50", "resnet101", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "shufflenet_v2_x1_0", "efficientnet_b0",
)
_EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def list_models() -> list[str]:
    """Every torchvision image classifier, by the names torchvision uses."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _check_name(name: str) -> None:
    known = list_models()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(f"unknown model {name!r}{hint}; known models: {', '.join(known)}")


def create_model(name: str, num_classes: int, *, weights: str | os.PathLike | None = None,
                 image_size: int | None = None) -> nn.Module:
    """Build a torchvision classifier for ``num_classes`` scene classes.

    Args:
        name: torchvision model name (``resnet18``, ``vgg16_bn``, ``mobilenet_v3_small``...).
        num_classes: size of the new head.
        weights: None (random init), ``"imagenet"`` (torchvision's default weights, needs
            internet), or a path to a state dict / checkpoint on disk.
        image_size: input side in pixels. Below a network's minimum size (AlexNet under ~63 px)
            its max-pooling layers get padding so the feature map never vanishes; this changes no
            parameter shape, so pretrained weights still fit.

    Raises:
        ModelError: unknown name, weights that do not fit, or an input too small for the network.
    """
    import torchvision

    _check_name(name)
    if num_classes < 2:
        raise ModelError(f"num_classes must be >= 2, got {num_classes}")
    kwargs = dict(_EXTRA_KWARGS.get(name, {}))
    if weights == "imagenet":
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT", **kwargs)
        except Exception as exc:  # no internet, no published weights
            raise ModelError(f"cannot fetch ImageNet weights for {name}: {exc}") from None
        replace_head(model, num_classes)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if weights is not None:
            load_backbone_weights(model, weights, name=name)
    if image_size is not None:
        adapt_to_input(model, image_size, name=name)
    return model


def classifier_head(model: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """The last classification layer: ``(parent, attribute, layer)``; Linear or 1x1 Conv2d."""
    last = None
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = module_name
    if last is None:
        raise ModelError(f"{type(model).__name__} has no Linear/Conv2d layer to use as a head")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear (or SqueezeNet's 1x1 conv) for a fresh one with ``num_classes`` outputs."""
    parent, attr, layer = classifier_head(model)
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    else:
        new = nn.Conv2d(layer.in_channels, num_classes, kernel_size=layer.kernel_size,
                        stride=layer.stride, padding=layer.padding, bias=layer.bias is not None)
    setattr(parent, attr, new)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a torchvision ``.pth`` or from one of our checkpoints (``weights_only``)."""
    blob = read_torch_file(path, what="weights", error=ModelError)
    if isinstance(blob, dict) and "state_dict" in blob and isinstance(blob["state_dict"], dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ModelError(f"{path} holds no state dict (expected tensors by parameter name)")
    return {k.removeprefix("module."): v for k, v in blob.items()}


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, *, name: str = "") -> None:
    """Load every tensor whose name and shape fit; the head (sized for another dataset) is kept fresh.

    Raises:
        ModelError: when fewer than half of the model's tensors find a match (wrong architecture).
    """
    state = read_state_dict(path)
    own = model.state_dict()
    _, _, head = classifier_head(model)
    head_ids = {id(p) for p in head.parameters()}
    head_keys = {k for k, p in model.named_parameters() if id(p) in head_ids}
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and k not in head_keys}
    body = [k for k in own if k not in head_keys]
    if len(fitting) < 0.5 * len(body):
        raise ModelError(f"weights {path} do not fit {name or type(model).__name__}: only "
                         f"{len(fitting)} of {len(body)} tensors match by name and shape")
    model.load_state_dict(fitting, strict=False)


def adapt_to_input(model: nn.Module, image_size: int, *, name: str = "") -> None:
    """Make sure a ``image_size`` input reaches the head; pad max-pools if the map would vanish."""
    def fits() -> bool:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, image_size, image_size))
            return True
        except RuntimeError:
            return False
        finally:
            model.train(was_training)

    if fits():
        return
    for module in model.modules():
        if isinstance(module, nn.MaxPool2d):
            k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            if module.padding == 0 and k >= 2:
                module.padding = k // 2
    if not fits():
        raise ModelError(f"{name or type(model).__name__} cannot take {image_size}px inputs; use a larger --image-size")
