"""Batched augmentation on tensors, after the cache: no per-image Python, no re-decoding.

Overhead scenes have no "up", so the dihedral group D4 (4 rotations x optional flip) is the
natural invariance; on top of it a random resized crop (resampled with ``roi_align``, one call
per batch) and a colour jitter. Each part can be switched off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run on training batches.

    Attributes:
        d4: random rotation by a multiple of 90 degrees and random horizontal flip (8 poses).
        crop: random resized crop back to the input size.
        crop_scale: range of the crop's area as a fraction of the image.
        jitter: strength of brightness / contrast / saturation jitter (0 disables).
    """

    d4: bool = True
    crop: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)
    jitter: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    def tag(self) -> str:
        """A short file-name-safe name of these settings (``d4-crop0.5-j0.2``; ``plain``: none)."""
        parts = (["d4"] if self.d4 else []) + ([f"crop{self.crop_scale[0]:g}-{self.crop_scale[1]:g}"]
                                               if self.crop else []) + ([f"j{self.jitter:g}"] if self.jitter else [])
        return "-".join(parts) or "plain"


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8-range floats in [0, 1] -> ImageNet-normalised (what torchvision weights expect)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def d4(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply one of the 8 dihedral poses to each image of the batch (square images)."""
    pose = torch.randint(0, 8, (x.shape[0],), generator=generator).to(x.device)
    out = torch.empty_like(x)
    for p in range(8):
        mask = pose == p
        if not bool(mask.any()):
            continue
        part = x[mask]
        if p >= 4:
            part = part.flip(3)
        out[mask] = torch.rot90(part, p % 4, dims=(2, 3))
    return out


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Crop a random box per image (area fraction in ``scale``, aspect 3/4..4/3) and resample it."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(b).uniform_(-0.2877, 0.2877, generator=generator)  # log(3/4)..log(4/3)
    ratio = torch.exp(log_ratio)
    cw = torch.sqrt(area * ratio).clamp(max=1.0) * w
    ch = torch.sqrt(area / ratio).clamp(max=1.0) * h
    x0 = torch.rand(b, generator=generator) * (w - cw)
    y0 = torch.rand(b, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    return roi_align(x, boxes.to(x.device, x.dtype), output_size=(h, w), spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in ``[1 - strength, 1 + strength]``."""
    b = x.shape[0]

    def factors() -> torch.Tensor:
        f = torch.empty(b).uniform_(1 - strength, 1 + strength, generator=generator)
        return f.to(x.device, x.dtype).view(b, 1, 1, 1)

    x = x * factors()
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    mean = gray.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * factors() + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - gray) * factors() + gray
    return x.clamp_(0, 1)


def augment_batch(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a float batch in [0, 1] (before normalisation)."""
    if config.crop:
        x = random_resized_crop(x, config.crop_scale, generator)
    if config.d4:
        x = d4(x, generator)
    if config.jitter > 0:
        x = colour_jitter(x, config.jitter, generator)
    return x
