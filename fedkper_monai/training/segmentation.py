"""The segmentation task (docs/design.md, Dense FedKPer): dense labels, mean foreground Dice, voxel-level flips.

Labels are class-index maps ``(B, 1, *spatial)`` (or ``(B, *spatial)``), logits ``(B, C, *spatial)`` with
class 0 the background. The metric (suffix ``dice``) is the mean foreground Dice of MONAI's ``DiceMetric``
(background excluded, only the classes present in a case); the flip unit is a ground-truth foreground voxel
(:class:`~fedkper_monai.algorithm.VoxelFlipTracker`); the label diversity is over the foreground
voxel-class histogram of the site's training cases (``C - 1`` classes). No FLARE.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from fedkper_monai.algorithm import VoxelFlipTracker
from fedkper_monai.algorithm.dense_loss import SUPERVISED_LOSSES, supervised_loss
from fedkper_monai.job_fields import SLIDING_WINDOW_KEYS
from fedkper_monai.training.task_base import Task

__all__ = ["SegmentationTask", "dice_per_case", "foreground_histogram"]


def dice_per_case(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of every foreground class in every case, ``(N, C - 1)``; NaN where the class is absent from the
    case's ground truth (MONAI ``DiceMetric``, ``include_background=False``, ``ignore_empty=True``).

    Args:
        labels, predictions: class-index volumes ``(N, *spatial)``.
        num_classes: ``C``, background included.
    """
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    rows = []
    for truth, predicted in zip(labels, predictions):  # one case at a time: one-hot volumes stay small
        y = F.one_hot(torch.as_tensor(truth, dtype=torch.long), num_classes).movedim(-1, 0)[None].float()
        y_pred = F.one_hot(torch.as_tensor(predicted, dtype=torch.long), num_classes).movedim(-1, 0)[None].float()
        rows.append(metric(y_pred=y_pred, y=y)[0].numpy())
    return np.stack(rows).astype(np.float64) if rows else np.zeros((0, num_classes - 1))


def foreground_histogram(label_volume: np.ndarray, num_classes: int) -> list[int]:
    """Voxels of each foreground class ``1..C-1`` in one label volume."""
    counts = np.bincount(np.asarray(label_volume, dtype=np.int64).ravel(), minlength=num_classes)
    return [int(c) for c in counts[1:num_classes]]


class SegmentationTask(Task):
    """Dense labels, mean foreground Dice, voxel flips over ground-truth foreground (see the module docstring).

    Args:
        supervised_loss: the supervised term of the local objectives, ``"ce"`` (voxel-mean cross-entropy)
            or ``"dice_ce"`` (MONAI ``DiceCELoss``).
        sliding_window: evaluate each case patch by patch with MONAI's ``sliding_window_inference`` instead of
            one forward pass over the whole evaluated volume: ``{"roi_size": [96, 96, 96]}`` (required: usually
            the training patch size) and optionally ``"sw_batch_size"`` (patches per forward, default 4),
            ``"overlap"`` (default 0.25) and ``"mode"`` (``"gaussian"``, the default, or ``"constant"``
            blending of overlapping patches). Memory then grows with ``roi_size``, not with the volume, so
            large volumes can be evaluated whole: set the transform config's ``eval_size`` to cover them
            (``prepare manifest --task segmentation`` records the largest case as ``max_case_size``).
            ``None`` (default): one forward pass.

    Example:
        >>> task = SegmentationTask()
        >>> labels = np.array([[[0, 1], [1, 2]]])
        >>> task.summary(labels, labels)
        (1.0, 1.0)
    """

    name: ClassVar[str] = "segmentation"
    metric: ClassVar[str] = "dice"

    def __init__(self, supervised_loss: str = "ce", sliding_window: Mapping[str, Any] | None = None) -> None:
        if supervised_loss not in SUPERVISED_LOSSES:
            raise ValueError(f"unknown supervised loss {supervised_loss!r}; valid names: {', '.join(SUPERVISED_LOSSES)}")
        self.supervised_loss = supervised_loss
        self.inferer = _sliding_window_inferer(sliding_window) if sliding_window is not None else None

    def targets(self, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
        if labels.ndim >= 3 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim < 2 or labels.shape[0] != batch_size:
            raise ValueError(
                f"label maps of shape {tuple(labels.shape)} do not match {batch_size} images: expected (B, 1, *spatial)"
            )
        return labels.round().long() if labels.is_floating_point() else labels.long()

    def check_outputs(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
        if logits.ndim != targets.ndim + 1 or logits.shape[1] != num_classes or logits.shape[2:] != targets.shape[1:]:
            raise ValueError(
                f"model produced logits of shape {tuple(logits.shape)}, expected (B, {num_classes}, "
                f"{', '.join(map(str, targets.shape[1:]))}) for label maps of shape {tuple(targets.shape)}"
            )
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise ValueError(f"label map values outside [0, {num_classes}): {int(targets.min())}..{int(targets.max())}")

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)

    def correct(self, labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        return predictions == labels

    def summary(self, labels: np.ndarray, predictions: np.ndarray) -> tuple[float, float]:
        """``(mean foreground Dice, class-balanced mean foreground Dice)``.

        The first averages each case's mean Dice over the foreground classes present in it; the second
        averages each foreground class's mean Dice over the cases holding it. 0.0 when no case holds any
        foreground (nothing to segment: no reliability).
        """
        num_classes = int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
        dice = dice_per_case(labels, predictions, max(num_classes, 2))
        present = ~np.isnan(dice)
        if not present.any():
            return 0.0, 0.0
        cases = present.any(axis=1)
        per_case = np.nanmean(dice[cases], axis=1)
        classes = present.any(axis=0)
        per_class = np.nanmean(dice[:, classes], axis=0)
        return float(per_case.mean()), float(per_class.mean())

    def label_histogram(self, entries: Sequence[Mapping[str, Any]], num_classes: int) -> list[int]:
        """Foreground voxels per class ``1..C-1`` over the entries (``C - 1`` counts: the diversity is over the
        foreground classes). An entry's ``class_voxels`` (all ``C`` classes, written by ``prepare``) is used
        when present; otherwise its label file is read."""
        total = np.zeros(num_classes - 1, dtype=np.int64)
        for entry in entries:
            counts = entry.get("class_voxels")
            if counts is None:
                counts = [0, *foreground_histogram(_read_label(entry["label"]), num_classes)]
            total += np.asarray(counts[1:num_classes], dtype=np.int64)
        return [int(c) for c in total]

    def flip_tracker(self, num_classes: int) -> VoxelFlipTracker:
        return VoxelFlipTracker(num_classes)

    def supervised_criterion(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        return None if self.supervised_loss == "ce" else supervised_loss(self.supervised_loss)

    def infer(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, *spatial)``: one forward pass, or MONAI's sliding window when configured."""
        return model(images) if self.inferer is None else self.inferer(images, model)


_SLIDING_WINDOW_KEYS = SLIDING_WINDOW_KEYS  # one list: the job checks refuse any other key before a site starts


def _sliding_window_inferer(settings: Mapping[str, Any]) -> Any:
    """MONAI's ``SlidingWindowInferer`` from the task option, checked first (a bad value names the key)."""
    from monai.inferers import SlidingWindowInferer

    if not isinstance(settings, Mapping):
        raise ValueError(f"sliding_window must be a mapping such as {{'roi_size': [96, 96, 96]}}, got {settings!r}")
    unknown = sorted(set(settings) - set(_SLIDING_WINDOW_KEYS))
    if unknown:
        raise ValueError(f"sliding_window: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_SLIDING_WINDOW_KEYS)}")
    roi = settings.get("roi_size")
    if not isinstance(roi, (list, tuple)) or len(roi) not in (2, 3) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in roi):
        raise ValueError(f"sliding_window.roi_size must be 2 or 3 positive integers (the patch size), got {roi!r}")
    batch, overlap, mode = settings.get("sw_batch_size", 4), settings.get("overlap", 0.25), settings.get("mode", "gaussian")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"sliding_window.sw_batch_size must be a positive integer, got {batch!r}")
    if not isinstance(overlap, (int, float)) or isinstance(overlap, bool) or not 0 <= overlap < 1:
        raise ValueError(f"sliding_window.overlap must be in [0, 1), got {overlap!r}")
    if mode not in ("gaussian", "constant"):
        raise ValueError(f"sliding_window.mode must be 'gaussian' or 'constant', got {mode!r}")
    return SlidingWindowInferer(roi_size=list(roi), sw_batch_size=batch, overlap=float(overlap), mode=mode)


def _read_label(path: str) -> np.ndarray:
    from fedkper_monai.data.volumes import read_volume

    return read_volume(path)[0]
