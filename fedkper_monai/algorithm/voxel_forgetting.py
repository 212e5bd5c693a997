"""Voxel-level forgetting for segmentation (docs/design.md, Dense FedKPer): flips over ground-truth foreground voxels.

A :class:`VoxelFlipTracker` belongs to one model role on one evaluation set, like
:class:`~fedkper_monai.algorithm.forgetting.FlipTracker`, but its unit is a foreground voxel of a case:
per case id it keeps one boolean array, "labelled correctly at the last evaluation", over the case's
ground-truth foreground voxels (in C order). The comparison is vectorized per case; no Python object
per voxel. No I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedkper_monai.algorithm.forgetting import FlipResult

__all__ = ["VoxelFlipTracker"]


def _as_array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


class VoxelFlipTracker:
    """Per-case memory of voxel correctness across evaluations of one model role on one set of cases.

    Only ground-truth foreground voxels (label > 0) count: a voxel right last time and wrong now is a
    negative flip. A case never seen before (or whose foreground changed shape) counts as previously all
    wrong. Cases absent from an evaluation keep their memory.

    Args:
        num_classes: classes of the task including background (class 0), >= 2.

    ``update`` returns a :class:`FlipResult` whose counts are voxels and whose ``per_class_forgetting``
    has one entry per foreground class ``1..C-1`` (negative flips of the class / its voxels evaluated).

    Example:
        >>> tracker = VoxelFlipTracker(num_classes=3)
        >>> labels = np.array([[[0, 1], [2, 2]]])          # one 2x2 case
        >>> tracker.update(["a"], labels == labels, labels).positive_flips
        3
        >>> tracker.update(["a"], labels == np.array([[[0, 1], [2, 0]]]), labels).per_class_forgetting
        [0.0, 0.5]
    """

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2 (background and a foreground class), got {num_classes!r}")
        self.num_classes = num_classes
        self._was_correct: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        """Number of cases remembered."""
        return len(self._was_correct)

    def update(self, case_ids: Sequence[Any], correct: Any, labels: Any) -> FlipResult:
        """Compare one evaluation with the last one and remember it.

        Args:
            case_ids: stable id of each case, unique within the evaluation.
            correct: per case, a boolean volume (prediction == label), ``(N, *spatial)`` or a sequence of
                arrays of each case's shape.
            labels: per case, the ground-truth class volume, same shapes as ``correct``.

        Raises:
            ValueError: lengths or shapes differ, a duplicate id, or a label outside ``[0, num_classes)``.
                The memory is unchanged then.
        """
        ids = [str(case) for case in (case_ids.tolist() if isinstance(case_ids, (np.ndarray, torch.Tensor)) else case_ids)]
        if len(set(ids)) != len(ids):
            raise ValueError("a case id appears twice in one evaluation")
        if not len(ids) == len(correct) == len(labels):
            raise ValueError(f"case_ids, correct and labels differ in length: {len(ids)}, {len(correct)}, {len(labels)}")
        foreground = self.num_classes - 1
        evaluated = np.zeros(self.num_classes, dtype=np.int64)
        forgotten = np.zeros(self.num_classes, dtype=np.int64)
        negative = positive = 0
        memory: dict[str, np.ndarray] = {}
        for case, case_correct, case_labels in zip(ids, correct, labels):
            right, classes = _as_array(case_correct).astype(bool), _as_array(case_labels).astype(np.int64)
            if right.shape != classes.shape:
                raise ValueError(f"case {case!r}: correct {right.shape} and labels {classes.shape} differ in shape")
            if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
                raise ValueError(f"case {case!r}: labels outside [0, {self.num_classes})")
            mask = classes > 0
            now, fg_classes = right[mask], classes[mask]
            before = self._was_correct.get(case)
            if before is None or before.shape != now.shape:
                before = np.zeros_like(now)
            lost = before & ~now
            negative += int(lost.sum())
            positive += int((now & ~before).sum())
            evaluated += np.bincount(fg_classes, minlength=self.num_classes)
            forgotten += np.bincount(fg_classes[lost], minlength=self.num_classes)
            memory[case] = now
        self._was_correct.update(memory)
        total = int(evaluated.sum())
        return FlipResult(
            negative_flips=negative,
            positive_flips=positive,
            unchanged=total - negative - positive,
            num_evaluated=total,
            nfr=negative / total if total else 0.0,
            per_class_forgetting=[
                float(forgotten[c] / evaluated[c]) if evaluated[c] else 0.0 for c in range(1, foreground + 1)
            ],
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable memory: per case its voxel count and the bits packed and base64-encoded."""
        return {
            "num_classes": self.num_classes,
            "cases": {
                case: [int(bits.size), base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")]
                for case, bits in self._was_correct.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the memory with one saved by :meth:`state_dict`.

        Raises:
            ValueError: a malformed state or one saved for another number of classes.
        """
        if not isinstance(state, Mapping) or state.get("num_classes") != self.num_classes or not isinstance(state.get("cases"), Mapping):
            raise ValueError(f"VoxelFlipTracker state must have num_classes={self.num_classes} and a 'cases' mapping")
        memory = {}
        for case, entry in state["cases"].items():
            size, packed = entry
            bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8), count=int(size))
            memory[str(case)] = bits.astype(bool)
        self._was_correct = memory
