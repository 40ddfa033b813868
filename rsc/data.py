"""Scene data as cached uint8 tensors, seeded stratified splits, and batch loaders.

The pipeline decodes every image once (in parallel, with a progress bar), resizes it to the
working size and caches the result as one uint8 tensor keyed by the dataset's files (names,
sizes, modification times) and the size. Training then indexes that tensor and augments whole
batches on the device (:mod:`rsc.augment`), so it is compute-bound rather than JPEG-bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rsc.augment import AugmentConfig, augment_batch, normalise
from rsc.datasets import DatasetInfo, scan
from rsc.errors import ConfigError, DataError

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

@dataclass(frozen=True)
class Split:
    """Indices of the train / validation / test parts of one seeded stratified split.

    Validation is carved out of the training part, never the test part. Byte-identical images
    (same sha256) always fall on one side.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_ratio: float
    val_ratio: float
    seed: int
    digest: str

    def manifest(self, data: SceneData) -> dict:
        """The split as ``file -> subset``, JSON-ready, with what produced it."""
        subsets = {}
        for name, index in (("train", self.train), ("val", self.val), ("test", self.test)):
            for i in index.tolist():
                subsets[data.files[i]] = name
        return {"format": "rsc-split/1", "dataset": data.name, "train_ratio": self.train_ratio,
                "val_ratio": self.val_ratio, "seed": self.seed, "digest": self.digest,
                "counts": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
                "files": dict(sorted(subsets.items()))}

    def info(self) -> dict:
        """What reproduces the split (recorded in checkpoints): ratios, seed and digest."""
        return {"train_ratio": self.train_ratio, "val_ratio": self.val_ratio, "seed": self.seed,
                "digest": self.digest}

    def save(self, path: str | os.PathLike, data: SceneData) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.manifest(data), indent=1))
        return path


def _digest(files: list[str], assignment: dict[int, str]) -> str:
    h = hashlib.sha256()
    for i in sorted(assignment, key=lambda i: files[i]):
        h.update(f"{files[i]}\t{assignment[i]}\n".encode())
    return h.hexdigest()[:16]


def _class_groups(data: SceneData, indices: Iterable[int]) -> dict[int, list[list[int]]]:
    """``indices`` by class as groups of byte-identical images (same sha256; a group in its first image's
    class), each class's groups sorted by their first file: what a split deals out, so duplicates stay together."""
    keys = data.sha256 or data.files
    groups: dict[str, list[int]] = defaultdict(list)
    for i in indices:
        groups[keys[i]].append(i)
    by_class: dict[int, list[list[int]]] = defaultdict(list)
    labels = data.labels.tolist()
    for members in groups.values():
        by_class[labels[members[0]]].append(members)
    return {c: sorted(g, key=lambda m: data.files[m[0]]) for c, g in by_class.items()}


def make_split(data: SceneData, *, train_ratio: float, seed: int = 0, val_ratio: float = 0.1) -> Split:
    """Stratified, seeded split: per class, ``round(train_ratio * n)`` images train, the rest test.

    Args:
        data: the dataset.
        train_ratio: fraction of each class used for training (the RS protocol's 10/20/50/80%).
        seed: the split's seed; the same seed always gives the same split.
        val_ratio: fraction of each class's *training* part held out for validation.

    Raises:
        ConfigError: ratios outside (0, 1), or a ratio that leaves a class with no training image.
    """
    if not 0 < train_ratio < 1:
        raise ConfigError(f"train ratio must be in (0, 1), got {train_ratio}")
    if not 0 <= val_ratio < 1:
        raise ConfigError(f"validation ratio must be in [0, 1), got {val_ratio}")
    by_class = _class_groups(data, range(len(data.files)))
    assignment: dict[int, str] = {}
    for c in range(data.num_classes):
        class_groups = by_class.get(c, [])
        n = sum(len(g) for g in class_groups)
        target = int(round(train_ratio * n))
        if target < 1:
            raise ConfigError(
                f"train ratio {train_ratio} leaves class {data.classes[c]!r} ({n} images) with no "
                f"training image; use a ratio of at least {1 / max(n, 1):.3f}")
        order = np.random.default_rng([seed, c]).permutation(len(class_groups))
        train_groups, taken = [], 0
        for g in order:
            if taken >= target:
                break
            train_groups.append(class_groups[g])
            taken += len(class_groups[g])
        in_train = {i for g in train_groups for i in g}
        for g in class_groups:
            for i in g:
                assignment[i] = "train" if i in in_train else "test"
        n_val = int(val_ratio * taken)
        if val_ratio > 0 and taken >= 2:
            n_val = max(1, min(n_val, taken - 1))
        moved = 0
        for g in train_groups:  # already in seeded random order
            if moved >= n_val or taken - moved - len(g) < 1:
                break
            for i in g:
                assignment[i] = "val"
            moved += len(g)
    return _split_from_assignment(data, assignment, train_ratio=train_ratio, val_ratio=val_ratio, seed=seed)


def _split_from_assignment(data: SceneData, assignment: dict[int, str], *, train_ratio: float,
                           val_ratio: float, seed: int) -> Split:
    parts = {name: sorted(i for i, s in assignment.items() if s == name) for name in ("train", "val", "test")}
    return Split(train=torch.tensor(parts["train"], dtype=torch.int64),
                 val=torch.tensor(parts["val"], dtype=torch.int64),
                 test=torch.tensor(parts["test"], dtype=torch.int64),
                 train_ratio=train_ratio, val_ratio=val_ratio, seed=seed,
                 digest=_digest(data.files, assignment))


def fold_split(data: SceneData, split: Split, *, folds: int, fold: int) -> Split:
    """Fold ``fold`` of ``folds`` of the training part (train + validation) of ``split``, as a split.

    Per class, the training part's images are dealt, in a seeded random order, into ``folds`` parts
    of near-equal size (byte-identical images stay together); fold ``fold`` is the validation part,
    the rest the training part, and the test part is ``split``'s, untouched. The folds partition the
    training part: every training image is held out exactly once over the ``folds`` splits, so a
    model trained from scratch on each is scored on all of it (cross-validation). The seed is
    ``split``'s, so the folds of a split are always the same.

    Raises:
        ConfigError: ``folds`` < 2, ``fold`` outside ``[0, folds)``, or a class with fewer training
            images than folds.
    """
    if int(folds) < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {folds}")
    if not 0 <= int(fold) < int(folds):
        raise ConfigError(f"fold {fold} is not one of 0..{int(folds) - 1}")
    assignment = {i: "test" for i in split.test.tolist()}
    for c, members in sorted(_class_groups(data, sorted(torch.cat([split.train, split.val]).tolist())).items()):
        n = sum(len(g) for g in members)
        if n < folds:
            raise ConfigError(f"class {data.classes[c]!r} has {n} training image(s), fewer than {folds} folds")
        order = np.random.default_rng([split.seed, c, 1 + int(folds)]).permutation(len(members))
        dealt = 0
        for g in order:  # the group's fold: where its first image falls in the dealt order
            part = dealt * int(folds) // n
            for i in members[g]:
                assignment[i] = "val" if part == int(fold) else "train"
            dealt += len(members[g])
    return _split_from_assignment(data, assignment, train_ratio=split.train_ratio,
                                  val_ratio=1 / int(folds), seed=split.seed)


def load_split(path: str | os.PathLike, data: SceneData) -> Split:
    """Read a saved manifest back, so a later run uses exactly the same split.

    Raises:
        DataError: an unreadable manifest, or files it names that the dataset lacks.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read split manifest {path}: {exc}") from None
    position = {f: i for i, f in enumerate(data.files)}
    missing = [f for f in files if f not in position]
    if missing:
        raise DataError(f"split manifest {path} names {len(missing)} file(s) not in the dataset, "
                        f"e.g. {missing[0]}")
    assignment = {position[f]: s for f, s in files.items()}
    bad = {s for s in assignment.values() if s not in ("train", "val", "test")}
    if bad:
        raise DataError(f"split manifest {path} has unknown subset(s) {sorted(bad)}")
    return _split_from_assignment(data, assignment, train_ratio=float(manifest.get("train_ratio", 0)),
                                  val_ratio=float(manifest.get("val_ratio", 0)),
                                  seed=int(manifest.get("seed", 0)))


# --------------------------------------------------------------------------- loaders

class TensorLoader:
    """Batches from a cached uint8 tensor: index, move, convert, augment, normalise.

    Iterating yields ``(x, y)`` with ``x`` float32 ``[B, 3, S, S]`` normalised and on ``device``.
    Each pass draws a fresh order and fresh augmentations from a generator seeded by ``seed``,
    so two loaders built alike give the same batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, *,
                 batch_size: int = 64, shuffle: bool = False, augment: AugmentConfig | None = None,
                 seed: int = 0, device: str | torch.device = "cpu", drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.images = images
        self.labels = labels
        self.indices = indices
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.device = torch.device(device)
        self.drop_last = drop_last and len(indices) > batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        non_blocking = self.device.type == "cuda"
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[index].to(self.device, non_blocking=non_blocking).float().div_(255)
            y = self.labels[index].to(self.device, non_blocking=non_blocking)
            if self.augment is not None:
                x = augment_batch(x, self.augment, self.generator)
            yield normalise(x), y


def make_loaders(data: SceneData, split: Split, *, batch_size: int = 64, augment: bool | AugmentConfig = True,
                 seed: int = 0, device: str | torch.device = "cpu"):
    """``(train, val, test)`` loaders for one split; only the training loader shuffles and augments."""
    config = augment if isinstance(augment, AugmentConfig) else (AugmentConfig() if augment else None)
    train = TensorLoader(data.images, data.labels, split.train, batch_size=batch_size, shuffle=True,
                         augment=config, seed=seed, device=device, drop_last=True)
    val = TensorLoader(data.images, data.labels, split.val, batch_size=max(batch_size, 128), device=device)
    test = TensorLoader(data.images, data.labels, split.test, batch_size=max(batch_size, 128), device=device)
    return train, val, test
