"""Batch loaders over a cached scene tensor: index, move, convert, augment on the device, normalise."""

from __future__ import annotations

import torch

from rsc.augment import AugmentConfig, augment_batch, normalise
from rsc.errors import ConfigError
from rsc.scenes import SceneData
from rsc.splits import Split

__all__ = ["TensorLoader", "make_loaders"]


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
