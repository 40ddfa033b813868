"""``--download`` tested on local archives (file:// URLs): checksum, progress, extraction, refusals."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace

import pytest

import rsc.catalog as datasets
from rsc.scenes import load_scene_data
from rsc.download import download_dataset, extract, fetch
from rsc.errors import DataError
from tests.conftest import write_image


@pytest.fixture
def archive(tmp_path):
    src = tmp_path / "src" / "UCMerced_LandUse" / "Images"
    for c in ("agricultural", "airplane"):
        for i in range(3):
            write_image(src / c / f"{c}{i:02d}.tif", seed=i, fmt="TIFF")
    path = tmp_path / "UCMerced_LandUse.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted((tmp_path / "src").rglob("*")):
            zf.write(f, f.relative_to(tmp_path / "src"))
    return path


@pytest.fixture
def registry_checksum(monkeypatch, archive):
    """Point the ucmerced entry's checksum at the local archive (the URL is passed per call)."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    info = replace(datasets._REGISTRY["ucmerced"], sha256=digest)
    monkeypatch.setitem(datasets._REGISTRY, "ucmerced", info)
    return digest


def test_download_checks_and_unpacks(archive, registry_checksum, tmp_path):
    dest = tmp_path / "data"
    folder = download_dataset("ucmerced", dest, url=archive.as_uri(), progress=False)
    data = load_scene_data(folder, image_size=16, progress=False)
    assert data.classes == ["agricultural", "airplane"] and len(data) == 6
    # a second call reuses the extracted copy (no new download)
    archive.unlink()
    assert download_dataset("ucmerced", dest, url=archive.as_uri(), progress=False) == folder


def test_checksum_mismatch_removes_the_file(archive, tmp_path):
    target = tmp_path / "dl" / "a.zip"
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(archive.as_uri(), target, sha256="0" * 64, progress=False)
    assert not target.exists() and not list(target.parent.iterdir())


def test_unreachable_url_and_datasets_without_archive(tmp_path):
    with pytest.raises(DataError, match="download of .* failed"):
        fetch((tmp_path / "missing.zip").as_uri(), tmp_path / "x.zip", progress=False)
    with pytest.raises(DataError, match="no direct download"):
        download_dataset("aid", tmp_path / "aid")


def test_archives_that_escape_the_folder_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(DataError, match="outside the target folder"):
        extract(evil, tmp_path / "out")
    rar = tmp_path / "x.rar"
    rar.write_bytes(b"Rar!")
    with pytest.raises(DataError, match="RAR"):
        extract(rar, tmp_path / "out")
