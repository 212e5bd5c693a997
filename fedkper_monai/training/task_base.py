"""The task seam's contract: what every imaging task (classification, segmentation) defines.

A :class:`Task` owns the label format of a batch, how predictions are made and checked, which predictions
count as correct (the unit the flip trackers count), the site's reliability measure (the ``r`` of the
FedKPer score), the label histogram its diversity is computed from, and the suffix of the metric names.
The training loop, evaluation and the site round (:mod:`fedkper_monai.training.site`) call these and
nothing task-specific of their own. Its own module so that the tasks (:mod:`~fedkper_monai.training.tasks`,
:mod:`~fedkper_monai.training.segmentation`) and the loop import the contract without importing each other.

No I/O and no FLARE: plain torch and numpy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from fedkper_monai.algorithm import FlipTracker

__all__ = ["Task"]


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
