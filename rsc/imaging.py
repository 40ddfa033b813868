"""Decode one image file to a square RGB uint8 array, whatever its mode.

Remote-sensing archives mix JPEG, 8- and 16-bit TIFF, palette PNG and grayscale scans; the model
wants RGB. Every conversion happens here, once, before the tensor cache.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
from PIL import Image

# A corrupt file must be skipped and named, never crash the run, and never be half-read silently.
Image.LOAD_TRUNCATED_IMAGES = False


class BadImage(Exception):
    """The file could not be decoded; the message says why (kept for the report)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    16-bit and 32-bit integer images (``I;16``, ``I``) are scaled by their bit depth rather than
    clipped, so a 16-bit scene does not come out white. Alpha is dropped (scenes are opaque).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        else:
            peak = float(array.max()) if array.size else 0.0
            scale = 65535.0 if peak > 255 else 255.0
            if mode == "F":
                scale = max(peak, 1e-12)
        array = np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def decode(path: str, size: int) -> tuple[np.ndarray, str]:
    """Read, convert and resize one image.

    Args:
        path: the file.
        size: output side; the whole scene is resized to ``size x size`` (area-averaging
            downscale), since RS scenes are square or within a few pixels of it.

    Returns:
        ``(array, sha256)``: uint8 ``[3, size, size]`` and the hex digest of the file's bytes
        (used to keep byte-identical images on one side of a split).

    Raises:
        BadImage: empty, truncated or undecodable files.
    """
    try:
        with open(path, "rb") as handle:
            payload = handle.read()
    except OSError as exc:
        raise BadImage(f"unreadable ({exc.strerror or exc})") from None
    if not payload:
        raise BadImage("empty file (0 bytes)")
    digest = hashlib.sha256(payload).hexdigest()
    try:
        import io

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's TIFF tag warnings are noise here
            with Image.open(io.BytesIO(payload)) as image:
                image.load()
                if image.width < 1 or image.height < 1:
                    raise BadImage("image has no pixels")
                rgb = to_rgb(image)
                if rgb.size != (size, size):
                    rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
                array = np.asarray(rgb, dtype=np.uint8)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadImage(f"cannot decode: {reason}") from None
    return np.ascontiguousarray(array.transpose(2, 0, 1)), digest
