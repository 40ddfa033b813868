"""Scene data as cached uint8 tensors: every image decoded once, resized, cached, reused.

The pipeline decodes every image once (in parallel, with a progress bar), resizes it to the
working size and caches the result as one uint8 tensor keyed by the dataset's files (names,
sizes, modification times) and the size. Training then indexes that tensor and augments whole
batches on the device (:mod:`rsc.augment`, :mod:`rsc.loaders`), so it is compute-bound rather
than JPEG-bound. Splits of it: :mod:`rsc.splits`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rsc.catalog import DatasetInfo, scan
from rsc.errors import ConfigError, DataError

__all__ = ["SceneData", "CACHE_VERSION", "synthetic_scene_data", "cache_dir", "load_scene_data", "save_scene_file",
           "load_scene_file"]

CACHE_VERSION = 2


@dataclass
class SceneData:
    """A whole dataset in memory, decoded and resized.

    Attributes:
        images: uint8 ``[N, 3, S, S]``.
        labels: int64 ``[N]``.
        classes: class names, index = label.
        files: paths relative to ``root`` (stable keys for split manifests).
        name: registry name (``"synthetic"`` for the built-in set, ``"custom"`` if unknown).
        root: the folder read, or None for the synthetic set.
        skipped: ``(file, reason)`` for every image that could not be decoded.
        sha256: content digest of each file (byte-identical files share a split side).
        warnings: layout notes (unexpected counts, stray files).
        folds: published fold of each image where the dataset defines folds.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    files: list[str]
    name: str
    root: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sha256: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    folds: list[int] | None = None

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def summary(self) -> str:
        where = self.root or "built-in synthetic scenes"
        text = (f"{self.name}: {len(self)} images, {self.num_classes} classes, "
                f"{self.image_size}px, from {where}")
        if self.skipped:
            text += f"; {len(self.skipped)} unreadable image(s) skipped"
        return text


def synthetic_scene_data(*, num_classes: int = 8, per_class: int = 60, image_size: int = 32,
                         seed: int = 0) -> SceneData:
    """The built-in synthetic set (see :mod:`rsc.synthetic`)."""
    from rsc.synthetic import generate

    images, labels, classes, files = generate(
        num_classes=num_classes, per_class=per_class, image_size=image_size, seed=seed)
    return SceneData(images=torch.from_numpy(images), labels=torch.from_numpy(labels),
                     classes=classes, files=files, name="synthetic")


def cache_dir() -> Path:
    """Where decoded tensors are kept: ``$RSC_CACHE_DIR`` or ``~/.cache/rsc``."""
    return Path(os.environ.get("RSC_CACHE_DIR") or Path.home() / ".cache" / "rsc")


def _decode_one(args: tuple[str, int]):
    from rsc.imaging import BadImage, decode

    path, size = args
    try:
        array, digest = decode(path, size)
        return array, digest, None
    except BadImage as exc:
        return None, None, str(exc)


def load_scene_data(data: str | os.PathLike | None, *, dataset: str | None = None, image_size: int = 64,
                    progress: bool = True, workers: int | None = None, use_cache: bool = True) -> SceneData:
    """Load a dataset from disk (or the synthetic set when ``data`` is None).

    Corrupt, empty or truncated images are skipped, counted and named in ``SceneData.skipped``;
    grayscale, palette, RGBA and 16-bit images are converted to RGB.

    Raises:
        DataError: missing/empty folders, class folders without images, nothing decodable.
        ConfigError: an image size below 16 px or an unknown dataset name.
    """
    if image_size < 16:
        raise ConfigError(f"image size must be at least 16 px, got {image_size}")
    if data is None:
        if dataset not in (None, "synthetic"):
            raise ConfigError(f"--dataset {dataset} needs --data PATH (the folder holding it)")
        return synthetic_scene_data(image_size=image_size)
    layout = scan(data, dataset=dataset)
    info: DatasetInfo | None = layout.info
    name = info.name if info else "custom"
    stats = []
    for rel in layout.files:
        st = (layout.root / rel).stat()
        stats.append((rel, st.st_size, st.st_mtime_ns))
    key = hashlib.sha256(json.dumps([CACHE_VERSION, image_size, layout.classes, layout.labels, stats])
                         .encode()).hexdigest()[:24]
    cache_file = cache_dir() / f"{name}-{image_size}px-{key}.pt"
    if use_cache and cache_file.is_file():
        try:
            return load_scene_file(cache_file, name=name, root=str(layout.root), warnings=layout.warnings)
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            print(f"warning: ignoring unreadable cache {cache_file}: {exc}", file=sys.stderr)

    paths = [(str(layout.root / rel), image_size) for rel in layout.files]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    results = _decode_all(paths, workers=workers, progress=progress, label=f"decoding {name}")
    keep, arrays, digests, skipped = [], [], [], []
    for index, (array, digest, error) in enumerate(results):
        if error is None:
            keep.append(index)
            arrays.append(array)
            digests.append(digest)
        else:
            skipped.append((layout.files[index], error))
    if not keep:
        raise DataError(f"none of the {len(paths)} images under {layout.root} could be decoded "
                        f"(first: {skipped[0][0]}: {skipped[0][1]})")
    labels = torch.tensor([layout.labels[i] for i in keep], dtype=torch.int64)
    counts = torch.bincount(labels, minlength=len(layout.classes))
    lost = [layout.classes[c] for c in range(len(layout.classes)) if counts[c] == 0]
    if lost:
        raise DataError(f"no readable image left in class(es) {', '.join(lost)} under {layout.root}")
    images = torch.from_numpy(np.stack(arrays))
    files = [layout.files[i] for i in keep]
    folds = [layout.folds[i] for i in keep] if layout.folds is not None else None
    result = SceneData(images=images, labels=labels, classes=list(layout.classes), files=files, name=name,
                       root=str(layout.root), skipped=skipped, sha256=digests,
                       warnings=list(layout.warnings), folds=folds)
    if use_cache:
        _write_cache(cache_file, result)
    return result


def _decode_all(paths: list[tuple[str, int]], *, workers: int, progress: bool, label: str) -> list:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), desc=label, unit="img", disable=not progress, leave=False)
    results = []
    try:
        if workers <= 1 or len(paths) < 256:
            for item in paths:
                results.append(_decode_one(item))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_decode_one, paths, chunksize=32):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


def save_scene_file(data: SceneData, path: str | os.PathLike | None = None) -> bytes | None:
    """Write ``data`` as one file (atomically), or return those bytes when ``path`` is None.

    The file is what :func:`load_scene_file` reads: the decode cache, and what a Ray worker
    without the image folder receives instead of it.
    """
    blob = {"images": data.images, "labels": data.labels, "classes": data.classes, "name": data.name,
            "files": data.files, "skipped": [list(s) for s in data.skipped], "sha256": data.sha256,
            "folds": data.folds}
    if path is None:
        import io

        buffer = io.BytesIO()
        torch.save(blob, buffer)
        return buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return None


def load_scene_file(path: str | os.PathLike, *, name: str | None = None, root: str | None = None,
                    warnings: list[str] | None = None) -> SceneData:
    """A data set written by :func:`save_scene_file` (``name`` overrides the one it holds).

    Raises:
        DataError: the file is missing or is not such a file.
    """
    try:
        blob = torch.load(path, weights_only=True)
        return SceneData(images=blob["images"], labels=blob["labels"], classes=list(blob["classes"]),
                         files=list(blob["files"]), name=name or blob.get("name") or "custom",
                         root=root, skipped=[tuple(s) for s in blob["skipped"]],
                         sha256=list(blob["sha256"]) if blob.get("sha256") is not None else None,
                         warnings=list(warnings or []), folds=blob.get("folds"))
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except (KeyError, TypeError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a scene data file: {type(exc).__name__}: {exc}") from None


def _write_cache(path: Path, data: SceneData) -> None:
    try:
        save_scene_file(data, path)
    except OSError as exc:  # a read-only home must not stop training
        print(f"warning: could not write cache {path}: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- splits
