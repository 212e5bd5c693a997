"""Metrics of a model's predictions on a labelled datalist, and the confusion-matrix figure.

Accuracy and balanced accuracy are computed by the classification task of the training layer, so
``fedkper-monai evaluate`` reports the same figures a site reported during the run (``personalized_acc``,
``personalized_balanced_acc``) for the same model and split.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedkper_monai.io import atomic_write_bytes

__all__ = ["classification_metrics", "save_confusion_matrix"]


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over the classes present), per-class recall, confusion matrix.

    Args:
        labels: true classes ``(N,)``.
        predictions: predicted classes ``(N,)``.
        class_names: one name per class, index = class.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``per_class_recall`` (name -> recall, None for a class absent
        from ``labels``), ``confusion_matrix`` (rows: true class, columns: predicted), ``num_samples``.
    """
    from fedkper_monai.training.tasks import make_task

    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    num_classes = len(class_names)
    accuracy, balanced = make_task("classification").summary(labels, predictions)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    recall = {
        name: (float(matrix[i, i] / matrix[i].sum()) if matrix[i].sum() else None) for i, name in enumerate(class_names)
    }
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "per_class_recall": recall,
        "confusion_matrix": matrix.tolist(),
        "num_samples": int(labels.size),
    }


def save_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """The confusion matrix (rows: true, columns: predicted) as a PNG with counts in the cells, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    counts = np.asarray(matrix)
    size = max(4.0, 0.6 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(class_names)), labels=list(class_names), rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), labels=list(class_names))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    if title:
        axes.set_title(title)
    threshold = counts.max() / 2 if counts.size else 0
    for (row, column), value in np.ndenumerate(counts):
        axes.text(column, row, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())
