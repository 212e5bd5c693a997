"""The task seam: what differs between imaging tasks (classification now, segmentation next).

A :class:`Task` owns the label format of a batch, how predictions are made and checked, which predictions
count as correct (the unit the flip trackers count), the site's reliability measure (the ``r`` of the
FedKPer score), the label histogram its diversity is computed from, and the suffix of the metric names.
The training loop, evaluation and the site round (:mod:`fedkper_monai.training.site`) call these and
nothing task-specific of their own, so a new task is one subclass here plus a registry line.

No I/O and no FLARE: plain torch and numpy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from fedkper_monai.algorithm import FlipTracker
from fedkper_monai.data.datalist import class_counts

__all__ = ["Task", "ClassificationTask", "TASK_NAMES", "make_task"]


class Task(ABC):
    """What a task defines; subclasses set ``name`` and ``metric`` and implement every method.

    ``metric`` is the suffix of the metric names a site reports (``personalized_<metric>``,
    ``global_on_local_<metric>``, ``train_<metric>``), ``"acc"`` for classification.
    """

    name: ClassVar[str] = "base"
    metric: ClassVar[str] = "metric"

    @abstractmethod
    def targets(self, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
        """A batch's labels as the loss takes them (not yet on the device)."""

    @abstractmethod
    def check_outputs(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
        """Raise ``ValueError`` when the model's logits or the labels do not fit the task."""

    @abstractmethod
    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted labels, in the targets' format."""

    @abstractmethod
    def correct(self, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        """Boolean correctness per counted unit (what the flip trackers compare between evaluations)."""

    @abstractmethod
    def summary(self, labels: np.ndarray, predictions: np.ndarray) -> tuple[float, float]:
        """``(metric, class-balanced metric)`` of one evaluation."""

    @abstractmethod
    def label_histogram(self, entries: Sequence[Mapping[str, Any]], num_classes: int) -> list[int]:
        """Counts per class of a datalist's entries: the input of the site's label diversity."""

    def reliability(self, metric_on_training_split: float) -> float:
        """The reliability ``r`` of the FedKPer score from the trained local model's metric on its own
        training split (evaluated deterministically); the metric itself by default."""
        return float(metric_on_training_split)

    def flip_tracker(self, num_classes: int) -> Any:
        """A fresh flip memory for one model role, fed ``(ids, correct, labels)`` of an evaluation."""
        return FlipTracker(num_classes)

    def supervised_criterion(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The supervised term of the local objectives; ``None``: cross-entropy."""
        return None

    def infer(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Evaluation logits of ``images`` ``(B, C_in, *spatial)``: one forward pass by default (a task may run
        the model patch by patch, as segmentation's sliding window does for large volumes)."""
        return model(images)


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


def _segmentation() -> type[Task]:
    # Imported late: the segmentation module imports this one for the base class.
    from fedkper_monai.training.segmentation import SegmentationTask

    return SegmentationTask


_TASKS: Mapping[str, Callable[[], type[Task]]] = {"classification": lambda: ClassificationTask, "segmentation": _segmentation}

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
    cls = _TASKS[name]()
    try:
        return cls(**options)
    except TypeError:
        raise ValueError(f"task {name!r} does not take the option(s) {', '.join(sorted(options))}") from None

