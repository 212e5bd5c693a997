"""The FedKPer site score and the server's aggregation weights (pure numpy, no I/O).

A site scores itself after local training with ``score = max(acc, 0) * (eps + diversity)``,
where ``diversity`` is the normalized entropy of its class histogram. The server turns the
scores of the sites that answered into aggregation weights, and falls back to sample-count
weights (FedAvg) when the scores cannot be used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np

__all__ = ["label_diversity", "fedkper_score", "aggregation_weights"]

ClassCounts = Union[Sequence[float], np.ndarray, Mapping[int, float]]


def _histogram(class_counts: ClassCounts, num_classes: int) -> np.ndarray:
    """Validate ``class_counts`` and return it as a float64 vector of length ``num_classes``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(class_counts, Mapping):
        counts = np.zeros(num_classes, dtype=np.float64)
        for label, count in class_counts.items():
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
                raise ValueError(f"class_counts key {label!r} is not a class index in [0, {num_classes})")
            counts[int(label)] = float(count)
    else:
        counts = np.asarray(class_counts, dtype=np.float64)
        if counts.ndim != 1 or counts.shape[0] != num_classes:
            raise ValueError(
                f"class_counts must hold one count per class: expected shape ({num_classes},), got {counts.shape}"
            )
    if not np.all(np.isfinite(counts)):
        raise ValueError(f"class_counts must be finite, got {counts.tolist()}")
    if np.any(counts < 0):
        raise ValueError(f"class_counts must be non-negative, got {counts.tolist()}")
    return counts


def label_diversity(class_counts: ClassCounts, num_classes: int) -> float:
    """Entropy of a site's class histogram over the task's classes, normalized to [0, 1].

    ``H(p) / log(num_classes)`` with ``p = counts / sum(counts)`` and ``0 * log 0 = 0``.

    Args:
        class_counts: either a vector of exactly ``num_classes`` counts (index = class), or a
            mapping ``{class_index: count}`` in which absent classes count zero (handy for a
            ``collections.Counter`` of labels). Counts must be finite and non-negative.
        num_classes: the number of classes of the task (not of the site), ``>= 1``.

    Returns:
        0.0 for an empty site, a one-class site, or ``num_classes == 1``; 1.0 for a uniform histogram.

    Raises:
        ValueError: negative or non-finite counts, a vector of the wrong length, a key out of range.

    Example:
        >>> label_diversity([5, 5, 0, 0], 4)
        0.5
    """
    counts = _histogram(class_counts, num_classes)
    total = counts.sum()
    if num_classes == 1 or total == 0:
        return 0.0
    p = counts[counts > 0] / total
    entropy = float(-(p * np.log(p)).sum())
    # Clip: round-off can push a uniform histogram a hair above 1 (or a one-class one below 0).
    return min(max(entropy / math.log(num_classes), 0.0), 1.0)


def fedkper_score(
    train_accuracy: float, class_counts: ClassCounts, num_classes: int, eps: float = 1e-6
) -> float:
    """A site's FedKPer aggregation score: ``max(acc, 0) * (eps + label_diversity)``.

    Args:
        train_accuracy: accuracy of the trained local model on the site's training split, in [0, 1].
            NaN is passed through (the score is NaN and :func:`aggregation_weights` falls back
            to sample counts); a negative value scores 0.
        class_counts: the site's class histogram, see :func:`label_diversity`.
        num_classes: the number of classes of the task.
        eps: keeps one-class sites at a tiny positive score instead of exactly 0.

    Returns:
        The score, in ``[0, 1 + eps]``, or NaN for a NaN accuracy.

    Raises:
        ValueError: ``train_accuracy`` above 1, a negative ``eps``, or bad ``class_counts``.

    Example:
        >>> round(fedkper_score(0.8, [5, 5, 0, 0], 4), 6)
        0.400001
    """
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps!r}")
    diversity = label_diversity(class_counts, num_classes)
    accuracy = float(train_accuracy)
    if math.isnan(accuracy):
        return math.nan
    if accuracy > 1.0:
        raise ValueError(f"train_accuracy must be at most 1, got {accuracy}")
    return max(accuracy, 0.0) * (eps + diversity)


def aggregation_weights(scores: Sequence[float], num_samples: Sequence[float]) -> list[float]:
    """Normalized aggregation weights for the sites that answered this round.

    The weights are ``scores / sum(scores)``. If any score is non-finite (NaN, inf) or the scores
    sum to 0 (for example every sampled site has train accuracy 0), the weights are the
    normalized sample counts instead, i.e. FedAvg.

    Args:
        scores: one FedKPer score per site, each ``>= 0`` or non-finite.
        num_samples: one training-sample count per site, same order, each finite and ``>= 0``.

    Returns:
        One weight per site, summing to 1; ``[]`` for no sites.

    Raises:
        ValueError: lengths differ, a finite score is negative, a sample count is negative or
            non-finite, or all sample counts are 0.

    Example:
        >>> aggregation_weights([0.25, 0.75], [10, 30])
        [0.25, 0.75]
        >>> aggregation_weights([float("nan"), 0.5], [10, 30])
        [0.25, 0.75]
    """
    score_arr = np.asarray(list(scores), dtype=np.float64)
    count_arr = np.asarray(list(num_samples), dtype=np.float64)
    if score_arr.shape != count_arr.shape:
        raise ValueError(f"scores and num_samples differ in length: {score_arr.shape[0]} != {count_arr.shape[0]}")
    if score_arr.size == 0:
        return []
    if not np.all(np.isfinite(count_arr)) or np.any(count_arr < 0):
        raise ValueError(f"num_samples must be finite and non-negative, got {count_arr.tolist()}")
    if count_arr.sum() == 0:
        raise ValueError("num_samples are all 0: no site reported training data")
    finite = np.isfinite(score_arr)
    if np.any(score_arr[finite] < 0):
        raise ValueError(f"scores must be non-negative, got {score_arr.tolist()}")
    if scores_usable(score_arr):
        return (score_arr / score_arr.sum()).tolist()
    return (count_arr / count_arr.sum()).tolist()


def scores_usable(scores: Sequence[float]) -> bool:
    """Whether :func:`aggregation_weights` weights by these scores: all finite and a positive sum.

    Otherwise it falls back to sample counts (FedAvg). A streaming aggregator asks this at the end
    of a round to pick between its score-weighted and sample-weighted running sums.
    """
    score_arr = np.asarray(list(scores), dtype=np.float64)
    return bool(score_arr.size) and bool(np.all(np.isfinite(score_arr))) and float(score_arr.sum()) > 0


def effective_sites(weights: Sequence[float]) -> float:
    """The effective number of sites of normalized weights, ``1 / sum(w^2)``: 1 when one site carries
    everything, ``k`` for ``k`` equal weights.

    Example:
        >>> effective_sites([0.5, 0.5]), effective_sites([1.0, 0.0])
        (2.0, 1.0)
    """
    squares = float(np.sum(np.square(np.asarray(list(weights), dtype=np.float64))))
    return 1.0 / squares if squares > 0 else 0.0


def blend_toward_samples(score_weights: Sequence[float], sample_weights: Sequence[float], min_effective_sites: float) -> float:
    """The smallest share ``g`` in [0, 1] of sample-count weights that lifts ``(1 - g) * score_weights +
    g * sample_weights`` to ``min_effective_sites`` effective sites (:func:`effective_sites`).

    An opt-in remedy for rounds the FedKPer score hands to one site (a one-class site scores ~1e-6, so its
    partner can carry 99.99% of the aggregate): it keeps the paper's weights where they already spread over
    enough sites (``g = 0``) and moves toward FedAvg's only as far as needed. The target is capped at what
    sample-count weights reach (``g = 1`` then). ``min_effective_sites <= 1`` switches it off.

    Example:
        >>> round(blend_toward_samples([0.99, 0.01], [0.5, 0.5], 1.5), 4)  # smaller weight lifted to about 0.21
        0.4109
        >>> blend_toward_samples([0.6, 0.4], [0.5, 0.5], 1.5)  # already 1.92 effective sites
        0.0
    """
    score_arr = np.asarray(list(score_weights), dtype=np.float64)
    sample_arr = np.asarray(list(sample_weights), dtype=np.float64)
    if score_arr.shape != sample_arr.shape:
        raise ValueError(f"weights differ in length: {score_arr.shape[0]} != {sample_arr.shape[0]}")
    target = min(float(min_effective_sites), effective_sites(sample_arr))
    if target <= 1.0 or effective_sites(score_arr) >= target:
        return 0.0
    # sum(w(g)^2) with w(g) = s + g (n - s) is a convex quadratic in g; the smallest root of
    # sum(w^2) = 1 / target is where the blend first reaches the target.
    step = sample_arr - score_arr
    a, b, c = float(step @ step), 2.0 * float(score_arr @ step), float(score_arr @ score_arr) - 1.0 / target
    if a <= 0:
        return 0.0
    root = (-b - math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)
    return float(min(max(root, 0.0), 1.0))


def noisy_score(score: float, epsilon: float, rng: np.random.Generator) -> float:
    """The score with Laplace noise calibrated for ``epsilon``-differential privacy of the value sent.

    The score lies in [0, 1] (times ``1 + eps``), so one site's score changes by at most 1: Laplace noise of
    scale ``1 / epsilon`` makes the sent value ``epsilon``-differentially private (the Laplace mechanism),
    and clipping to [0, 1] afterwards is post-processing. Smaller ``epsilon``: more noise, weights closer to
    chance. A NaN score stays NaN (the server drops it).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> 0.0 <= noisy_score(0.4, epsilon=1.0, rng=rng) <= 1.0
        True
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
    if math.isnan(score):
        return score
    return float(min(max(score + rng.laplace(0.0, 1.0 / epsilon), 0.0), 1.0))
