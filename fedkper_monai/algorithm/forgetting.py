"""Forgetting metrics: per-sample flips between evaluations, and backward transfer (no I/O).

A :class:`FlipTracker` belongs to one model role on one evaluation set (the global model on
the global test set, the global model on site k's test split, site k's local model on its
test split). It remembers, per sample id, whether the role got the sample right at its last
evaluation, so flips are counted per sample, not per batch position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import numpy as np
import torch

__all__ = ["FlipResult", "FlipTracker", "backward_transfer"]

SampleId = Union[int, str]


@dataclass(frozen=True)
class FlipResult:
    """Flips of one evaluation against the previous evaluation of the same samples.

    Attributes:
        negative_flips: samples right last time and wrong now (forgotten).
        positive_flips: samples wrong (or never seen) last time and right now.
        unchanged: samples whose correctness did not change.
        num_evaluated: samples in this evaluation.
        nfr: negative flip rate, ``negative_flips / num_evaluated`` (0.0 for an empty evaluation).
        per_class_forgetting: per class c, negative flips of class c / samples of class c
            evaluated (0.0 where none of class c was evaluated); length ``num_classes``.
    """

    negative_flips: int
    positive_flips: int
    unchanged: int
    num_evaluated: int
    nfr: float
    per_class_forgetting: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain-python copy for metrics records."""
        return asdict(self)


def _to_list(values: Sequence[Any] | np.ndarray | torch.Tensor) -> list[Any]:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return values.tolist()
    return list(values)


def _sample_id(raw: Any) -> SampleId:
    """Normalize an id to ``int`` or ``str`` so numpy/torch integers and python ints are one key."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bool, np.bool_)):
        raise ValueError(f"sample id must be an int or a str, got the bool {raw!r}")
    if isinstance(raw, (int, np.integer)):
        return int(raw)
    raise ValueError(f"sample id must be an int or a str, got {type(raw).__name__} {raw!r}")


class FlipTracker:
    """Per-sample memory of correctness across evaluations of one model role on one set.

    A sample never seen before counts as previously wrong, so at the first evaluation every
    correct sample is a positive flip. Samples absent from an evaluation keep their memory.
    Ids are ints or strings (``1`` and ``"1"`` are different samples); order does not matter.

    Args:
        num_classes: number of classes of the task, >= 1.

    Example:
        >>> tracker = FlipTracker(num_classes=2)
        >>> tracker.update(["a", "b"], [True, True], [0, 1]).positive_flips
        2
        >>> tracker.update(["b", "a"], [True, False], [1, 0]).per_class_forgetting
        [1.0, 0.0]
    """

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self._was_correct: dict[SampleId, bool] = {}

    def __len__(self) -> int:
        """Number of samples remembered."""
        return len(self._was_correct)

    def update(
        self,
        sample_ids: Sequence[SampleId] | np.ndarray | torch.Tensor,
        correct: Sequence[bool] | np.ndarray | torch.Tensor,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
    ) -> FlipResult:
        """Compare one evaluation with the last one and remember it.

        Args:
            sample_ids: stable id of each evaluated sample, unique within the evaluation.
            correct: whether the model got each sample right, same order.
            labels: the true class of each sample, in ``[0, num_classes)``, same order.

        Returns:
            The :class:`FlipResult` of this evaluation.

        Raises:
            ValueError: lengths differ, a duplicate or invalid id, or a label out of range.
                The memory is unchanged then.
        """
        ids = [_sample_id(raw) for raw in _to_list(sample_ids)]
        right = [bool(value) for value in _to_list(correct)]
        classes = _to_list(labels)
        if not len(ids) == len(right) == len(classes):
            raise ValueError(
                f"sample_ids, correct and labels differ in length: {len(ids)}, {len(right)}, {len(classes)}"
            )
        if len(set(ids)) != len(ids):
            seen: set[SampleId] = set()
            for sample in ids:
                if sample in seen:
                    raise ValueError(f"sample id {sample!r} appears twice in one evaluation")
                seen.add(sample)
        for label in classes:
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
                raise ValueError(f"label {label!r} is not a class index in [0, {self.num_classes})")

        negative = positive = 0
        evaluated_per_class = [0] * self.num_classes
        forgotten_per_class = [0] * self.num_classes
        for sample, is_right, label in zip(ids, right, classes):
            was_right = self._was_correct.get(sample, False)
            evaluated_per_class[label] += 1
            if was_right and not is_right:
                negative += 1
                forgotten_per_class[label] += 1
            elif is_right and not was_right:
                positive += 1
            self._was_correct[sample] = is_right

        num_evaluated = len(ids)
        return FlipResult(
            negative_flips=negative,
            positive_flips=positive,
            unchanged=num_evaluated - negative - positive,
            num_evaluated=num_evaluated,
            nfr=negative / num_evaluated if num_evaluated else 0.0,
            per_class_forgetting=[
                forgotten / evaluated if evaluated else 0.0
                for forgotten, evaluated in zip(forgotten_per_class, evaluated_per_class)
            ],
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable memory: ``{"num_classes": C, "samples": [[id, correct], ...]}``.

        A list of pairs (not an object) keeps int ids ints through JSON.
        """
        return {
            "num_classes": self.num_classes,
            "samples": [[sample, was_right] for sample, was_right in self._was_correct.items()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the memory with one saved by :meth:`state_dict`.

        Raises:
            ValueError: a malformed state or one saved for another number of classes.
        """
        if not isinstance(state, Mapping) or "num_classes" not in state or "samples" not in state:
            raise ValueError("FlipTracker state must be a mapping with 'num_classes' and 'samples'")
        if state["num_classes"] != self.num_classes:
            raise ValueError(
                f"FlipTracker state has num_classes={state['num_classes']}, this tracker has {self.num_classes}"
            )
        memory: dict[SampleId, bool] = {}
        for entry in state["samples"]:
            if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[1], bool):
                raise ValueError(f"FlipTracker state entry must be [id, bool], got {entry!r}")
            memory[_sample_id(entry[0])] = entry[1]
        self._was_correct = memory


def backward_transfer(current_acc: Mapping[str, float], acc_when_last_sampled: Mapping[str, float]) -> float:
    """Backward transfer: mean over previously sampled sites of (accuracy now - accuracy then).

    Args:
        current_acc: site -> global-on-local accuracy of the current global model.
        acc_when_last_sampled: site -> global-on-local accuracy right after the round in which the
            site was last sampled; only sites sampled before appear here.

    Returns:
        The mean difference over the sites of ``acc_when_last_sampled`` (0.0 when it is empty);
        negative values mean the global model forgot those sites.

    Raises:
        ValueError: a site of ``acc_when_last_sampled`` is missing from ``current_acc``.

    Example:
        >>> round(backward_transfer({"a": 0.5, "b": 0.9}, {"a": 0.7, "b": 0.8}), 6)
        -0.05
    """
    if not acc_when_last_sampled:
        return 0.0
    missing = [site for site in acc_when_last_sampled if site not in current_acc]
    if missing:
        raise ValueError(f"no current accuracy for site(s) {missing}")
    differences = [float(current_acc[site]) - float(past) for site, past in acc_when_last_sampled.items()]
    return float(np.mean(differences))
