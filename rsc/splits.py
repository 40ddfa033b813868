"""Seeded stratified splits of a scene set, as the remote-sensing protocol draws them.

Per class ``round(ratio x n)`` images train and the rest test; validation is carved out of the
training part; byte-identical images never straddle a split. :func:`fold_split` gives the folds of
a split's training part for cross-validation; :func:`load_split` reads a split saved with a run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rsc.errors import ConfigError, DataError
from rsc.scenes import SceneData

__all__ = ["Split", "make_split", "fold_split", "load_split"]


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
