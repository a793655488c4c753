"""Validation metrics of the chosen probe head (torchmetrics) and the confusion-matrix figure.

Top-1 and top-5 are micro averages (share of samples right), as reported for SSv2 / K400; top-5
clamps k to the number of classes. Per-class accuracy is recall per class (NaN for a class with no
validation sample, so an absent class is visible rather than scored 0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Top-1, top-5, per-class accuracy and the confusion matrix.

    Args:
        probs: [M, C] class scores (view-averaged softmax).
        labels: int64 [M] true classes.
        num_classes: C.

    Returns:
        {"top1": float, "top5": float, "top5_k": int, "per_class": list[float] (NaN where the class
        has no sample), "confusion": int64 [C, C] (rows = true, columns = predicted), "num_samples"}.
    """
    if probs.shape != (len(labels), num_classes):
        raise ValueError(
            f"probs {tuple(probs.shape)} do not match {len(labels)} labels × {num_classes} classes"
        )
    probs, labels = probs.float().cpu(), labels.long().cpu()
    k5 = min(5, num_classes)
    top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")(probs, labels)
    top5 = MulticlassAccuracy(num_classes, top_k=k5, average="micro")(probs, labels)
    confusion = MulticlassConfusionMatrix(num_classes)(probs, labels)  # [C, C]
    support = confusion.sum(1)
    per_class = torch.where(support > 0, confusion.diagonal() / support.clamp_min(1), float("nan"))
    return {
        "top1": float(top1),
        "top5": float(top5),
        "top5_k": k5,
        "per_class": per_class.tolist(),
        "confusion": confusion,
        "num_samples": len(labels),
    }


def save_confusion_png(
    confusion: torch.Tensor, path: str | Path, title: str = "", class_names: list[str] | None = None
) -> Path:
    """Write the row-normalised confusion matrix as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = confusion.float()
    norm = c / c.sum(1, keepdim=True).clamp_min(1)  # each true class sums to 1
    n = len(c)
    size = min(max(4.0, n * 0.35), 20.0)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm.numpy(), vmin=0, vmax=1, cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion ({int(c.sum())} samples)")
    if n <= 30:
        names = class_names or [str(i) for i in range(n)]
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, int(c[i, j]), ha="center", va="center", color="w", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
