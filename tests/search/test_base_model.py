"""The base model cache: keyed by what decides the model, versioned so older trainings are not reused."""

from __future__ import annotations

import shutil

import torch

from rsc.augment import AugmentConfig
from rsc.checkpoint import load_checkpoint
from rsc.scenes import synthetic_scene_data
from rsc.splits import make_split
from search.base_model import DEFAULT_BATCH_SIZE, DEFAULT_LR, KEY_VERSION, obtain_base_checkpoint


def _get(data, split, **kw):
    args = dict(model_name="resnet18", weights=None, data=data, split=split, epochs=1, lr=0.05, batch_size=64,
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


def test_another_learning_rate_or_batch_size_is_another_base_never_the_cached_one():
    """A network trained at ``--network-lr alexnet=0.03`` after one at 0.01 must not load the 0.01 model."""
    data = synthetic_scene_data(num_classes=3, per_class=10, image_size=16)
    split = make_split(data, train_ratio=0.8, seed=0, val_ratio=0.1)
    default, _ = _get(data, split, lr=DEFAULT_LR, batch_size=DEFAULT_BATCH_SIZE)
    assert "-lr" not in default.name and "-b" not in default.name.rsplit("-bn4", 1)[1]  # old keys stay valid
    low, trained = _get(data, split, lr=0.01)
    assert trained and low.name.endswith("-lr0.01.pt") and load_checkpoint(low)["config"]["lr"] == 0.01
    high, trained = _get(data, split, lr=0.03)
    assert trained and high != low and high.name.endswith("-lr0.03.pt")
    assert _get(data, split, lr=0.01) == (low, False)
    small, trained = _get(data, split, lr=0.01, batch_size=8)
    assert trained and small.name.endswith("-lr0.01-b8.pt")
    # a file under the default key that a rate outside the key trained (before the rate was part of it)
    shutil.copyfile(low, default)
    assert _get(data, split, lr=DEFAULT_LR) == (default, True)   # retrained, not taken
    assert load_checkpoint(default)["config"]["lr"] == DEFAULT_LR
