"""A built-in, procedurally generated scene set: nothing shipped, nothing downloaded.

Each class is a family of overhead-looking textures (water with ripples, forest canopy, crop
stripes, a residential roof grid, a freeway, dunes, a beach line, a parking lot) drawn with
random orientation, scale, colour and noise, so a CNN has something real to learn, orientation
invariance included, while tests and demos stay fast and deterministic. The same
``(seed, num_classes, per_class, image_size)`` always gives the same bytes.
"""

from __future__ import annotations

import numpy as np

SYNTHETIC_CLASSES = (
    "water", "forest", "farmland", "residential", "freeway", "desert", "beach", "parking",
)


def _grid(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in [0, 1), rotated by a random angle (overhead scenes have no 'up')."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * xs + np.sin(angle) * ys
    v = -np.sin(angle) * xs + np.cos(angle) * ys
    return u, v


def _smooth_noise(size: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bilinearly, in [0, 1]."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    pos = np.linspace(0, cells, size, endpoint=False, dtype=np.float32)
    i = pos.astype(int)
    f = pos - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _colour(base: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    jitter = rng.normal(0, 0.04, 3)
    return np.clip(np.asarray(base, dtype=np.float32) + jitter, 0, 1)


def _paint(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return mask[..., None] * a + (1 - mask[..., None]) * b


def _scene(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    u, v = _grid(size, rng)
    name = SYNTHETIC_CLASSES[label % len(SYNTHETIC_CLASSES)]
    noise = _smooth_noise(size, rng, cells=int(rng.integers(3, 8)))
    if name == "water":
        waves = 0.5 + 0.5 * np.sin(2 * np.pi * (u * rng.uniform(6, 12) + noise * 2))
        img = _paint(0.25 * waves + 0.5 * noise, _colour((0.2, 0.35, 0.55), rng), _colour((0.05, 0.15, 0.3), rng))
    elif name == "forest":
        canopy = _smooth_noise(size, rng, cells=max(4, size // 4))
        img = _paint(canopy, _colour((0.15, 0.4, 0.12), rng), _colour((0.05, 0.2, 0.05), rng))
    elif name == "farmland":
        period = rng.uniform(4, 9)
        stripes = (np.floor(u * period) % 2).astype(np.float32)
        img = _paint(0.7 * stripes + 0.3 * noise, _colour((0.55, 0.5, 0.25), rng), _colour((0.3, 0.45, 0.15), rng))
    elif name == "residential":
        period = rng.uniform(5, 9)
        roofs = ((u * period % 1) < 0.55) & ((v * period % 1) < 0.55)
        img = _paint(roofs.astype(np.float32), _colour((0.6, 0.3, 0.25), rng), _colour((0.35, 0.45, 0.3), rng))
    elif name == "freeway":
        offset = rng.uniform(0.3, 0.7)
        road = (np.abs(u - offset) < rng.uniform(0.06, 0.12)).astype(np.float32)
        lanes = road * (np.abs(((u - offset) * 40) % 1 - 0.5) < 0.08)
        ground = _paint(noise, _colour((0.45, 0.45, 0.3), rng), _colour((0.3, 0.4, 0.2), rng))
        img = _paint(road, _colour((0.35, 0.35, 0.35), rng), ground)
        img = img + lanes[..., None] * 0.4
    elif name == "desert":
        ripples = 0.5 + 0.5 * np.sin(2 * np.pi * (u * rng.uniform(3, 6) + 1.5 * noise))
        img = _paint(ripples, _colour((0.85, 0.7, 0.45), rng), _colour((0.7, 0.55, 0.35), rng))
    elif name == "beach":
        edge = rng.uniform(0.35, 0.65) + 0.08 * (noise - 0.5)
        sea = (u > edge).astype(np.float32)
        img = _paint(sea, _colour((0.1, 0.3, 0.5), rng), _colour((0.85, 0.78, 0.6), rng))
    else:  # parking
        period = rng.uniform(10, 16)
        bays = (np.abs((u * period) % 1 - 0.5) < 0.06) | (np.abs(v - 0.5) < 0.04)
        cars = (rng.random((size, size)) < 0.02).astype(np.float32)
        img = _paint(bays.astype(np.float32), _colour((0.9, 0.9, 0.85), rng), _colour((0.3, 0.3, 0.32), rng))
        img = np.clip(img + cars[..., None] * _colour((0.6, 0.1, 0.1), rng), 0, 1)
    img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(2, 0, 1)


def generate(*, num_classes: int = 8, per_class: int = 40, image_size: int = 32, seed: int = 0):
    """Generate the synthetic set.

    Returns:
        ``(images, labels, classes, files)``: uint8 array ``[N, 3, S, S]``, int64 labels, class
        names and pseudo file names (``<class>/<class>_<i>.png``) that act as stable keys in
        split manifests.
    """
    if not 2 <= num_classes <= len(SYNTHETIC_CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(SYNTHETIC_CLASSES)}], got {num_classes}")
    if per_class < 2:
        raise ValueError(f"per_class must be >= 2, got {per_class}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    classes = list(SYNTHETIC_CLASSES[:num_classes])
    images = np.empty((num_classes * per_class, 3, image_size, image_size), dtype=np.uint8)
    labels = np.empty(num_classes * per_class, dtype=np.int64)
    files = []
    for label in range(num_classes):
        for i in range(per_class):
            rng = np.random.default_rng([seed, label, i])
            index = label * per_class + i
            images[index] = _scene(label, image_size, rng)
            labels[index] = label
            files.append(f"{classes[label]}/{classes[label]}_{i:04d}.png")
    return images, labels, classes, files
