"""Decoding, caching, splits and loaders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rsc.augment import AugmentConfig, augment_batch, d4
from rsc.loaders import TensorLoader, make_loaders
from rsc.scenes import load_scene_data, synthetic_scene_data
from rsc.splits import load_split, make_split
from rsc.errors import ConfigError, DataError
from rsc.imaging import BadImage, decode
from tests.conftest import write_image


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16"])
def test_odd_modes_become_rgb(tmp_path, mode):
    path = write_image(tmp_path / f"x.{'tif' if mode == 'I;16' else 'png'}", mode=mode, size=30)
    array, digest = decode(str(path), 16)
    assert array.shape == (3, 16, 16) and array.dtype == np.uint8 and len(digest) == 64
    if mode == "I;16":  # scaled by bit depth, not clipped to white
        assert 30 < array.mean() < 225


def test_sixteen_bit_keeps_its_contrast(tmp_path):
    from PIL import Image

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")
    array, _ = decode(str(tmp_path / "ramp.tif"), 32)
    assert array.min() < 10 and array.max() > 245


def test_corrupt_truncated_and_empty_files_are_bad_images(tmp_path):
    good = write_image(tmp_path / "good.jpg", size=64)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg" * 10)
    for name, reason in (("truncated.jpg", "cannot decode"), ("empty.jpg", "empty file"),
                         ("garbage.jpg", "cannot decode")):
        with pytest.raises(BadImage, match=reason):
            decode(str(tmp_path / name), 32)


def test_bad_images_are_skipped_counted_and_named(image_folder):
    (image_folder / "beach" / "beach99.jpg").write_bytes(b"\xff\xd8\xff broken")
    (image_folder / "forest" / "empty.png").write_bytes(b"")
    write_image(image_folder / "harbor" / "gray.png", mode="L", seed=7)
    data = load_scene_data(image_folder, image_size=24, progress=False)
    assert len(data) == 31 and data.images.shape == (31, 3, 24, 24)
    assert sorted(f for f, _ in data.skipped) == ["beach/beach99.jpg", "forest/empty.png"]
    assert "unreadable image(s) skipped" in data.summary()


def test_a_class_whose_images_are_all_unreadable(tmp_path):
    write_image(tmp_path / "beach" / "a.jpg")
    write_image(tmp_path / "beach" / "b.jpg", seed=1)
    (tmp_path / "forest").mkdir()
    (tmp_path / "forest" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no readable image left in class.*forest"):
        load_scene_data(tmp_path, image_size=16, progress=False)


def test_cache_is_reused_and_invalidated_by_changes(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("RSC_CACHE_DIR", str(tmp_path / "cache"))
    first = load_scene_data(image_folder, image_size=20, progress=False)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    second = load_scene_data(image_folder, image_size=20, progress=False)
    assert torch.equal(first.images, second.images) and first.files == second.files
    write_image(image_folder / "beach" / "new.jpg", seed=999)
    third = load_scene_data(image_folder, image_size=20, progress=False)
    assert len(third) == len(first) + 1
    load_scene_data(image_folder, image_size=24, progress=False)  # another size, another entry
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3


def test_corrupt_cache_is_rebuilt(image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RSC_CACHE_DIR", str(tmp_path / "cache"))
    load_scene_data(image_folder, image_size=20, progress=False)
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    cache_file.write_bytes(b"junk")
    data = load_scene_data(image_folder, image_size=20, progress=False)
    assert len(data) == 30 and "ignoring unreadable cache" in capsys.readouterr().err


def test_parallel_decoding_matches_serial(ucmerced, tmp_path):
    sub = tmp_path / "ucm"
    for c in sorted(p.name for p in ucmerced.iterdir())[:3]:
        shutil.copytree(ucmerced / c, sub / c)  # 300 images: large enough for the process pool
    serial = load_scene_data(sub, image_size=32, progress=False, workers=1, use_cache=False)
    parallel = load_scene_data(sub, image_size=32, progress=False, workers=2, use_cache=False)
    assert torch.equal(serial.images, parallel.images) and serial.sha256 == parallel.sha256


def test_split_is_stratified_seeded_and_disjoint():
    data = synthetic_scene_data(num_classes=4, per_class=20, image_size=16)
    a = make_split(data, train_ratio=0.5, seed=3, val_ratio=0.2)
    b = make_split(data, train_ratio=0.5, seed=3, val_ratio=0.2)
    c = make_split(data, train_ratio=0.5, seed=4, val_ratio=0.2)
    assert a.digest == b.digest and a.digest != c.digest
    parts = [set(a.train.tolist()), set(a.val.tolist()), set(a.test.tolist())]
    assert sum(map(len, parts)) == len(data) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for cls in range(4):
        in_train = int((data.labels[a.train] == cls).sum()) + int((data.labels[a.val] == cls).sum())
        assert in_train == 10  # round(0.5 * 20) per class, validation taken from it
        assert int((data.labels[a.val] == cls).sum()) == 2


def test_byte_identical_images_never_straddle_a_split():
    data = synthetic_scene_data(num_classes=2, per_class=20, image_size=16)
    data.sha256 = [f"h{i}" for i in range(len(data))]
    for i in range(1, 8):  # seven copies of the first image of class 0
        data.sha256[i] = "h0"
    for seed in range(10):
        split = make_split(data, train_ratio=0.5, seed=seed)
        sides = {side for side, idx in (("train", split.train), ("val", split.val), ("test", split.test))
                 for i in idx.tolist() if data.sha256[i] == "h0"}
        assert len(sides) == 1


def test_ratio_that_leaves_a_class_without_training_images():
    data = synthetic_scene_data(num_classes=3, per_class=4, image_size=16)
    with pytest.raises(ConfigError, match="leaves class 'water' .* no training image"):
        make_split(data, train_ratio=0.1)
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(ConfigError):
            make_split(data, train_ratio=bad)


def test_manifest_round_trip_and_mismatch(tmp_path):
    data = synthetic_scene_data(num_classes=3, per_class=10, image_size=16)
    split = make_split(data, train_ratio=0.8, seed=1)
    path = split.save(tmp_path / "split.json", data)
    manifest = json.loads(path.read_text())
    assert manifest["counts"] == {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    again = load_split(path, data)
    assert again.digest == split.digest and torch.equal(again.test, split.test)
    manifest["files"]["nope/x.png"] = "train"
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="not in the dataset"):
        load_split(path, data)
    path.write_text("{broken")
    with pytest.raises(DataError, match="cannot read split manifest"):
        load_split(path, data)


def test_loader_batches_are_deterministic_and_normalised():
    data = synthetic_scene_data(num_classes=3, per_class=10, image_size=16)
    split = make_split(data, train_ratio=0.8)
    batches = [list(make_loaders(data, split, batch_size=8, seed=5)[0]) for _ in range(2)]
    assert len(batches[0]) == len(make_loaders(data, split, batch_size=8)[0])
    for (x1, y1), (x2, y2) in zip(*batches):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert x1.dtype == torch.float32 and x1.shape[1:] == (3, 16, 16)
    test = make_loaders(data, split, batch_size=8)[2]
    assert sum(len(y) for _, y in test) == len(split.test)
    with pytest.raises(ConfigError):
        TensorLoader(data.images, data.labels, split.train, batch_size=0)


def test_d4_poses_are_exact_rotations_and_flips():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = d4(x.repeat(16, 1, 1, 1), g)
    poses = [torch.rot90(x[0], k, dims=(1, 2)) for k in range(4)]
    poses += [torch.rot90(x[0].flip(2), k, dims=(1, 2)) for k in range(4)]
    for img in out[0::2]:
        assert any(torch.equal(img, p) for p in poses)


def test_augmentations_can_be_switched_off_and_validate():
    x = torch.rand(4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, AugmentConfig(d4=False, crop=False, jitter=0.0), g), x)
    out = augment_batch(x, AugmentConfig(), g)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError):
        AugmentConfig(crop_scale=(0.0, 1.0))


def test_synthetic_set_is_deterministic_and_learnable_shape():
    a = synthetic_scene_data(num_classes=4, per_class=5, image_size=24, seed=1)
    b = synthetic_scene_data(num_classes=4, per_class=5, image_size=24, seed=1)
    c = synthetic_scene_data(num_classes=4, per_class=5, image_size=24, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.classes == ["water", "forest", "farmland", "residential"] and a.class_counts() == [5] * 4
    means = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(4)])
    assert (means[0] - means[1]).abs().mean() > 5  # classes differ visibly


def test_small_image_size_is_refused():
    with pytest.raises(ConfigError, match="at least 16"):
        load_scene_data(None, image_size=8)
