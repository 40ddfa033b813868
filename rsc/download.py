"""``--download``: fetch a dataset's official archive, check it, unpack it.

The archive streams to ``<dest>/<name>.part`` with a progress bar while its SHA-256 / MD5 is
computed; only a matching file is renamed and unpacked (zip or tar, with paths checked so no
member can escape ``dest``). An existing, complete download is reused.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from pathlib import Path

from rsc.catalog import DatasetInfo, get_dataset_info
from rsc.errors import DataError


def _archive_name(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    return name or "archive.zip"


def fetch(url: str, target: Path, *, sha256: str | None = None, md5: str | None = None,
          progress: bool = True, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``target`` and verify it; a mismatch removes the file and raises DataError."""
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    hasher = hashlib.sha256() if sha256 else hashlib.md5() if md5 else hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}",
                      disable=not progress, leave=False) as bar:
                while True:
                    block = response.read(chunk)
                    if not block:
                        break
                    out.write(block)
                    hasher.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed: {getattr(exc, 'reason', exc)}") from None
    expected = sha256 or md5
    if expected and hasher.hexdigest().lower() != expected.lower():
        part.unlink(missing_ok=True)
        kind = "SHA-256" if sha256 else "MD5"
        raise DataError(f"checksum mismatch for {url}: {kind} {hasher.hexdigest()} != expected {expected}")
    os.replace(part, target)
    return target


def extract(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar archive into ``dest``, refusing members that would land outside it."""
    dest = dest.resolve()

    def inside(member: str) -> bool:
        return (dest / member).resolve().is_relative_to(dest)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            bad = [m for m in zf.namelist() if not inside(m)]
            if bad:
                raise DataError(f"{archive} has members outside the target folder, e.g. {bad[0]}")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            bad = [m.name for m in tf.getmembers() if not inside(m.name) or m.issym() or m.islnk()]
            if bad:
                raise DataError(f"{archive} has unsafe members, e.g. {bad[0]}")
            tf.extractall(dest)
    elif archive.suffix.lower() == ".rar":
        raise DataError(f"{archive} is a RAR archive: extract it by hand (unrar x) and pass the folder")
    else:
        raise DataError(f"{archive} is neither a zip nor a tar archive")


def download_dataset(name: str, dest: str | os.PathLike, *, url: str | None = None, progress: bool = True) -> Path:
    """Make dataset ``name`` available under ``dest``; returns the folder to pass as ``--data``.

    Args:
        name: registry name (``ucmerced``, ``nwpu_resisc45``...).
        dest: folder to download and unpack into (created if needed).
        url: override of the registry URL (a mirror, or a local ``file://`` archive); the
            registry checksum still applies.
    """
    info: DatasetInfo = get_dataset_info(name)
    source = url or info.url
    if not source:
        raise DataError(f"{info.title} has no direct download; {info.note or 'download it by hand'}")
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / _archive_name(source)
    marker = dest / f".{info.name}.extracted"
    if marker.is_file():
        return dest
    if not archive.is_file():
        fetch(source, archive, sha256=info.sha256, md5=info.md5, progress=progress)
    extract(archive, dest)
    marker.write_text(source + "\n")
    return dest
