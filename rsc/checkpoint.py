"""Checkpoints: weights + architecture + class names + split, readable with ``weights_only=True``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from rsc.errors import CheckpointError
from rsc.files import read_torch_file
from rsc.models import create_model

FORMAT = "rsc-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, arch: dict, classes: list[str],
                    split: dict, metrics: dict | None = None, config: dict | None = None) -> Path:
    """Write a checkpoint atomically.

    Args:
        arch: ``{"model": name, "num_classes": n, "image_size": s}`` - enough for
            :func:`rsc.models.create_model` to rebuild the network.
        split: ``{"train_ratio", "val_ratio", "seed", "digest"}`` of the split it was trained on.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "arch": dict(arch), "classes": list(classes), "split": dict(split),
            "metrics": metrics or {}, "config": config or {},
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    blob = read_torch_file(path, what="checkpoint", error=CheckpointError)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rsc checkpoint (expected format {FORMAT!r})")
    return blob


def model_from_checkpoint(blob: dict) -> nn.Module:
    """Rebuild the network of a checkpoint and load its weights."""
    arch = blob["arch"]
    model = create_model(arch["model"], int(arch["num_classes"]), image_size=arch.get("image_size"))
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {arch['model']}: {str(exc).splitlines()[0]}") from None
    return model


def check_classes(blob: dict, classes: list[str], *, where: str = "") -> None:
    """A checkpoint must be evaluated on the classes it was trained on, in the same order."""
    trained = list(blob["classes"])
    if trained == list(classes):
        return
    only_ckpt = sorted(set(trained) - set(classes))
    only_data = sorted(set(classes) - set(trained))
    detail = []
    if only_ckpt:
        detail.append(f"only in checkpoint: {', '.join(only_ckpt[:5])}")
    if only_data:
        detail.append(f"only in dataset: {', '.join(only_data[:5])}")
    if not detail:
        detail.append("same names in a different order")
    raise CheckpointError(f"checkpoint classes ({len(trained)}) do not match the dataset{where} "
                          f"({len(classes)}): {'; '.join(detail)}")
