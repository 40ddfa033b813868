"""Layout detection and the dataset registry."""

from __future__ import annotations

import pytest

from rsc.catalog import get_dataset_info, list_datasets, scan
from rsc.errors import ConfigError, DataError
from tests.conftest import write_image

SEED_DATASETS = ("ucmerced", "nwpu_resisc45", "aid", "whu_rs19", "siri_whu", "rsscn7", "rsc11",
                 "brazilian_coffee", "eurosat")


@pytest.mark.parametrize("name", SEED_DATASETS)
def test_registry_has_every_seed_dataset(name):
    info = get_dataset_info(name)
    assert info.num_classes >= 2 and info.num_images > info.num_classes and info.native_size > 0
    assert all(0 < r < 1 for r in info.train_ratios)


def test_registry_lookup_is_forgiving_and_unknown_names_list_known_ones():
    assert get_dataset_info("UCMerced_LandUse").name == "ucmerced"
    assert get_dataset_info("NWPU-RESISC45").name == "nwpu_resisc45"
    with pytest.raises(ConfigError, match="known datasets: .*ucmerced"):
        get_dataset_info("imagenet")
    assert "eurosat" in list_datasets()


def test_official_ucmerced_layout_with_images_folder_and_tif(tmp_path):
    root = tmp_path / "UCMerced_LandUse" / "Images"
    for c in ("agricultural", "airplane"):
        for i in range(3):
            write_image(root / c / f"{c}{i:02d}.tif", seed=i, fmt="TIFF")
    layout = scan(tmp_path / "UCMerced_LandUse")
    assert layout.classes == ["agricultural", "airplane"]
    assert len(layout.files) == 6 and layout.files[0].endswith(".tif")
    assert layout.info is None  # 2 classes is not UC Merced; detection needs the class count to agree


def test_real_ucmerced_is_detected(ucmerced):
    layout = scan(ucmerced)
    assert layout.info is not None and layout.info.name == "ucmerced"
    assert len(layout.classes) == 21 and len(layout.files) == 2100 and not layout.warnings


def test_wrapper_folders_and_non_class_folders(tmp_path):
    root = tmp_path / "RSSCN7-master"
    for c in ("aGrass", "bField"):
        write_image(root / c / "a001.JPG", seed=1)
    (root / ".idea").mkdir()
    (root / "README.md").write_text("not a class")
    layout = scan(tmp_path)
    assert layout.classes == ["aGrass", "bField"]  # .idea is not a class, upper-case .JPG is an image


def test_brazilian_coffee_folds(tmp_path):
    root = tmp_path / "brazilian_coffee_scenes"
    for fold in (1, 2):
        lines = []
        for i in range(3):
            label = "coffee" if i % 2 else "noncoffee"
            name = f"img.{fold}.{i}"  # dots inside names: split on the first dot only
            write_image(root / f"fold{fold}" / f"{name}.jpg", seed=fold * 10 + i)
            lines.append(f"{label}.{name}")
        (root / f"fold{fold}.txt").write_text("\n".join(lines) + "\n")
    layout = scan(tmp_path)
    assert layout.classes == ["coffee", "noncoffee"]
    assert len(layout.files) == 6 and layout.folds == [1, 1, 1, 2, 2, 2]
    assert layout.info.name == "brazilian_coffee"


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nope")


def test_a_file_is_not_a_dataset(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        scan(f)


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="empty"):
        scan(tmp_path)


def test_class_folders_without_images(tmp_path):
    write_image(tmp_path / "beach" / "a.jpg")
    (tmp_path / "forest").mkdir()
    (tmp_path / "forest" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="hold no images: forest"):
        scan(tmp_path)


def test_images_without_class_folders(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg", seed=1)
    with pytest.raises(DataError, match="no class folders"):
        scan(tmp_path)
