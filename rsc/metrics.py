"""The figures RS papers report: overall accuracy, per-class accuracy, Cohen's kappa, confusion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Metrics:
    """Evaluation of one model on one subset.

    Attributes:
        oa: overall accuracy (correct / total).
        kappa: Cohen's kappa (agreement beyond chance).
        per_class: accuracy (recall) of each class; NaN for a class absent from the subset.
        confusion: ``[true, predicted]`` counts.
        n: number of images evaluated.
    """

    oa: float
    kappa: float
    per_class: list[float]
    confusion: np.ndarray
    n: int

    def to_dict(self, classes: list[str] | None = None) -> dict:
        names = classes or [str(i) for i in range(len(self.per_class))]
        return {"oa": self.oa, "kappa": self.kappa, "n": self.n,
                "per_class": {c: (None if np.isnan(a) else a) for c, a in zip(names, self.per_class)},
                "confusion": self.confusion.tolist()}


def metrics_from_confusion(confusion: np.ndarray) -> Metrics:
    confusion = np.asarray(confusion, dtype=np.int64)
    total = int(confusion.sum())
    correct = int(np.trace(confusion))
    oa = correct / total if total else float("nan")
    rows = confusion.sum(axis=1)
    cols = confusion.sum(axis=0)
    expected = float((rows * cols).sum()) / (total * total) if total else 0.0
    kappa = (oa - expected) / (1 - expected) if total and expected < 1 else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(rows > 0, np.diag(confusion) / np.maximum(rows, 1), np.nan)
    return Metrics(oa=oa, kappa=float(kappa), per_class=[float(a) for a in per_class],
                   confusion=confusion, n=total)


@torch.no_grad()
def predict(model: nn.Module, loader, *, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(predictions, targets)`` over a loader, model in eval mode (restored afterwards)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    preds, targets = [], []
    try:
        for x, y in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x.to(device))
            preds.append(logits.argmax(dim=1).cpu())
            targets.append(y.cpu())
    finally:
        model.train(was_training)
    if not preds:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return torch.cat(preds), torch.cat(targets)


def evaluate(model: nn.Module, loader, *, num_classes: int, device: str | torch.device = "cpu") -> Metrics:
    """OA, kappa, per-class accuracy and confusion matrix of ``model`` on ``loader``."""
    preds, targets = predict(model, loader, device=device)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (targets.numpy(), preds.numpy()), 1)
    return metrics_from_confusion(confusion)


def plot_confusion(metrics: Metrics, classes: list[str], path, *, title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG (what a reader of an RS paper expects to see)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = metrics.confusion.astype(float)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    side = max(5.0, 0.35 * n + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or f"OA {metrics.oa:.3f}  kappa {metrics.kappa:.3f}  (n={metrics.n})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
