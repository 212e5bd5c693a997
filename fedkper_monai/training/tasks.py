"""The tasks by name: classification here, segmentation in :mod:`fedkper_monai.training.segmentation`.

Every task implements :class:`~fedkper_monai.training.task_base.Task`; a new task is one subclass plus a
line in the registry below (:func:`make_task`).

No I/O and no FLARE: plain torch and numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from fedkper_monai.data.datalist import class_counts
from fedkper_monai.training.segmentation import SegmentationTask
from fedkper_monai.training.task_base import Task

__all__ = ["ClassificationTask", "TASK_NAMES", "make_task"]


class ClassificationTask(Task):
    """One integer class per image: labels ``(B,)`` or ``(B, 1)``, logits ``(B, C)``, correctness per sample,
    reliability = training accuracy, diversity over the class histogram of the training entries."""

    name: ClassVar[str] = "classification"
    metric: ClassVar[str] = "acc"

    def targets(self, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != batch_size:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match {batch_size} images: expected (B,) or (B, 1)"
            )
        return labels.long()

    def check_outputs(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise ValueError(f"model produced logits of shape {tuple(logits.shape)}, expected (B, {num_classes})")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise ValueError(f"label out of range [0, {num_classes}): {targets.tolist()}")

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)

    def correct(self, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        return predictions == labels

    def summary(self, labels: np.ndarray, predictions: np.ndarray) -> tuple[float, float]:
        correct = self.correct(labels, predictions)
        # Balanced accuracy: mean recall over the classes present in this split.
        recalls = [correct[labels == cls].mean() for cls in np.unique(labels)]
        return float(correct.mean()), float(np.mean(recalls))

    def label_histogram(self, entries: Sequence[Mapping[str, Any]], num_classes: int) -> list[int]:
        return class_counts(entries, num_classes)


_TASKS: Mapping[str, type[Task]] = {"classification": ClassificationTask, "segmentation": SegmentationTask}

TASK_NAMES: tuple[str, ...] = tuple(_TASKS)
"""Names accepted by :func:`make_task`."""


def make_task(name: str = "classification", **options: Any) -> Task:
    """The task called ``name``, with its options (segmentation: ``supervised_loss``, ``"ce"`` or ``"dice_ce"``,
    and ``sliding_window``, see :class:`~fedkper_monai.training.segmentation.SegmentationTask`).

    Raises:
        ValueError: unknown name or option; the message lists the valid ones.
    """
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}")
    cls = _TASKS[name]
    try:
        return cls(**options)
    except TypeError:
        raise ValueError(f"task {name!r} does not take the option(s) {', '.join(sorted(options))}") from None

