"""The base model cache: keyed by what decides the model, versioned so older trainings are not reused."""

from __future__ import annotations

import torch

from rsc.augment import AugmentConfig
from rsc.checkpoint import load_checkpoint
from rsc.data import make_split, synthetic_scene_data
from search.base_model import KEY_VERSION, obtain_base_checkpoint


def _get(data, split, **kw):
    args = dict(model_name="resnet18", weights=None, data=data, split=split, epochs=1, lr=0.05, batch_size=16,
                seed=0, device="cpu", progress=False, say=lambda m: None)
    return obtain_base_checkpoint(**{**args, **kw})


def test_the_key_carries_its_version_the_bn_reestimation_and_a_non_default_augmentation():
    data = synthetic_scene_data(num_classes=3, per_class=10, image_size=16)
    split = make_split(data, train_ratio=0.8, seed=0, val_ratio=0.1)
    path, trained = _get(data, split)
    assert trained and path.name.startswith(f"v{KEY_VERSION}-resnet18-") and "-bn4" in path.name
    assert "-aug-" not in path.name  # the default augmentation keeps the plain key
    blob = load_checkpoint(path)
    assert blob["config"]["key_version"] == KEY_VERSION and blob["config"]["bn_batches"] == 4
    again, trained = _get(data, split)
    assert again == path and not trained  # cached
    # a checkpoint written by the code before the re-estimation (no version in its name) is never taken
    old = path.with_name(path.name.replace(f"v{KEY_VERSION}-", "").replace("-bn4", ""))
    assert old != path
    plain, trained = _get(data, split, bn_batches=0)
    assert trained and "-bn0" in plain.name
    none, _ = _get(data, split, augment=False)
    d4, _ = _get(data, split, augment=AugmentConfig(d4=True, crop=False, jitter=0.0))
    assert none.name.endswith("-aug-none.pt") and d4.name.endswith("-aug-d4.pt")
    # the same seed and weights up to the last epoch: only the BatchNorm buffers differ
    a, b = load_checkpoint(path)["state_dict"], load_checkpoint(plain)["state_dict"]
    assert torch.equal(a["conv1.weight"], b["conv1.weight"])
    assert not torch.allclose(a["bn1.running_var"], b["bn1.running_var"])
