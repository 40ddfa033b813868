"""Reading torch files safely: tensors and plain data only (``weights_only=True``), errors in one line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rsc.errors import UserError

__all__ = ["read_torch_file"]


def read_torch_file(path: str | os.PathLike, *, what: str, error: type[UserError]) -> Any:
    """``torch.load(weights_only=True)`` on CPU; a missing or unreadable file raises ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"cannot read {what} {path}: {str(exc).splitlines()[0]}") from None
