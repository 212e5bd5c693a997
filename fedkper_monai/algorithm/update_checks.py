"""Checks of one site update against the global model, before it touches any sum (pure numpy, no I/O).

docs/design.md, Rules the code keeps: dtypes castable to the global model's (complex, object, string refused), finite values,
expected keys and shapes, a bounded norm relative to the global model, a score in [0, 1], a positive
sample count not above what the site registered. Then the round-relative bounds (issue 21): each update's
distance from the global model clipped to a multiple of the round's median distance, each sample-count
claim capped at a multiple of the round's median claim. Every function returns the reason to drop the
update (a string) or the cleaned value; nothing here logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_SCORE",
    "DEFAULT_MAX_NORM_RATIO",
    "DEFAULT_CLIP_MULTIPLE",
    "DEFAULT_CLAIM_MULTIPLE",
    "MIN_UPDATES_FOR_MEDIAN",
    "cast_to_reference",
    "diff_to_full",
    "distance",
    "norm_ratio",
    "clip_factors",
    "clipped",
    "capped_claims",
    "score_problem",
    "sample_count_problem",
    "capped_shares",
]

# accuracy 1 on a perfectly class-balanced site scores 1 * (1 + eps): allow that eps (fedkper_score's default).
MAX_SCORE = 1.0 + 1e-6
# ||w_site - w_global|| / ||w_global||: a few local epochs of SGD move a model by a fraction of its norm;
# 10x its norm is far beyond honest training and still stops a 1e30 update from taking the model.
DEFAULT_MAX_NORM_RATIO = 10.0
# An update farther from the global model than this multiple of the round's median distance is scaled back
# onto it: honest sites of one round move by comparable amounts (a few local epochs from the same model), so
# 3x leaves them untouched while a scaled update keeps at most 3 honest steps of length.
DEFAULT_CLIP_MULTIPLE = 3.0
# A sample-count claim above this multiple of the round's median claim is capped to it (skewed partitions
# hold sites several times the median; a larger claim keeps at most k / (k + n - 1) of an n-site round).
DEFAULT_CLAIM_MULTIPLE = 4.0
# With 1 or 2 updates the median is one of them (or their mean): it says nothing about which is honest.
MIN_UPDATES_FOR_MEDIAN = 3
# Numeric kinds a site may send: bool, signed and unsigned integers, floats. Never complex, object, strings.
_NUMERIC_KINDS = "biuf"


def cast_to_reference(
    params: Mapping[str, Any] | None, reference: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The update cast to the global model's dtypes, or the reason it cannot be used.

    Checks, in order and over every key before anything is returned: weights present, the exact keys of
    ``reference``, a real numeric dtype (complex, object, string and structured arrays refused), the
    reference's shape, finite values after the cast (a float64 1e300 cast to float32 is inf: refused).

    Args:
        params: the site's weights, name -> array-like.
        reference: the global model sent this round, name -> array (its dtypes and shapes are the contract).

    Returns:
        ``(cast, None)`` with fresh arrays in the reference's dtypes, or ``(None, reason)``.
    """
    if not params:
        return None, "no weights in the update"
    missing = sorted(set(reference) - set(params))
    extra = sorted(set(params) - set(reference))
    if missing or extra:
        return None, f"unexpected keys: missing {missing[:5]}, extra {extra[:5]}"
    cast: dict[str, np.ndarray] = {}
    for name, expected in reference.items():
        array = np.asarray(params[name])
        if array.dtype.kind not in _NUMERIC_KINDS:
            return None, f"{name}: dtype {array.dtype} is not a real number type"
        if array.shape != expected.shape:
            return None, f"{name}: shape {tuple(array.shape)} differs from the global model's {tuple(expected.shape)}"
        with np.errstate(over="ignore", invalid="ignore"):
            converted = array.astype(expected.dtype, copy=True)
        if converted.dtype.kind == "f" and not np.all(np.isfinite(converted)):
            return None, f"{name}: non-finite values (after casting to {expected.dtype})"
        if expected.dtype.kind != "f" and array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            return None, f"{name}: non-finite values"
        cast[name] = converted
    return cast, None


def diff_to_full(
    params: Mapping[str, Any] | None, reference: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """A ``DIFF`` update (what FLARE's ``PercentilePrivacy`` and ``ExcludeVars`` filters leave) as full weights.

    ``full = reference + diff`` per key; a key absent from the diff means "no change" (diff 0). Keys the
    global model lacks, non-numeric dtypes and wrong shapes are refused here (before any addition); the
    result then goes through :func:`cast_to_reference` like a ``FULL`` update.
    """
    if params is None:
        return None, "no weights in the update"
    extra = sorted(set(params) - set(reference))
    if extra:
        return None, f"unexpected keys: extra {extra[:5]}"
    full: dict[str, np.ndarray] = {}
    for name, expected in reference.items():
        if name not in params:
            full[name] = expected
            continue
        diff = np.asarray(params[name])
        if diff.dtype.kind not in _NUMERIC_KINDS:
            return None, f"{name}: dtype {diff.dtype} is not a real number type"
        if diff.shape != expected.shape:
            return None, f"{name}: shape {tuple(diff.shape)} differs from the global model's {tuple(expected.shape)}"
        with np.errstate(over="ignore", invalid="ignore"):
            full[name] = expected + diff  # numpy's promotion; cast_to_reference casts back and checks finiteness
    return full, None


def distance(params: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """``||params - reference||`` over the floating-point keys (float64 sums).

    Counters such as BatchNorm's ``num_batches_tracked`` say nothing about influence and are left out.
    """
    total = 0.0
    for name, expected in reference.items():
        if expected.dtype.kind == "f":
            total += float(np.sum((params[name].astype(np.float64) - expected.astype(np.float64)) ** 2))
    return math.sqrt(total)


def norm_ratio(params: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """``||params - reference|| / max(||reference||, 1)`` over the floating-point keys (float64 sums).

    The floor of 1 keeps a near-zero global model (zero-initialized layers) from making every update huge.
    """
    size = sum(float(np.sum(value.astype(np.float64) ** 2)) for value in reference.values() if value.dtype.kind == "f")
    return distance(params, reference) / max(math.sqrt(size), 1.0)


def clip_factors(distances: Sequence[float], multiple: float) -> list[float]:
    """Per update, ``c = min(1, multiple * median(distances) / d)``: the factor that puts it back within
    ``multiple`` times the round's median distance from the global model.

    All 1.0 (nothing clipped) when ``multiple`` is 0 (off) or the round has fewer than
    :data:`MIN_UPDATES_FOR_MEDIAN` updates (a median of one or two says nothing about honesty).

    Example:
        >>> clip_factors([1.0, 2.0, 1.5, 30.0], 3.0)
        [1.0, 1.0, 1.0, 0.175]
    """
    values = [float(d) for d in distances]
    if not multiple or len(values) < MIN_UPDATES_FOR_MEDIAN:
        return [1.0] * len(values)
    bound = float(multiple) * float(np.median(values))
    return [1.0 if d <= bound else bound / d for d in values]


def clipped(params: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """``reference + factor * (params - reference)`` on the floating-point keys (in their dtype); other keys
    (counters) as sent. ``factor`` 1.0 returns ``params`` itself."""
    if factor == 1.0:
        return dict(params)
    return {
        name: (expected.astype(np.float64) + factor * (params[name].astype(np.float64) - expected.astype(np.float64))).astype(expected.dtype)
        if expected.dtype.kind == "f" else params[name]
        for name, expected in reference.items()
    }


def capped_claims(claims: Sequence[int], multiple: float) -> list[int]:
    """Sample-count claims, each capped at ``multiple`` times the round's median claim (rounded down, at least 1).

    Unchanged when ``multiple`` is 0 (off) or the round has fewer than :data:`MIN_UPDATES_FOR_MEDIAN` claims.

    Example:
        >>> capped_claims([120, 80, 10**12], 4.0)
        [120, 80, 480]
    """
    values = [int(c) for c in claims]
    if not multiple or len(values) < MIN_UPDATES_FOR_MEDIAN:
        return values
    bound = max(int(float(multiple) * float(np.median(values))), 1)
    return [min(c, bound) for c in values]


def score_problem(score: Any) -> str | None:
    """Why a FedKPer score is unusable (not a number, NaN, outside [0, 1]), or ``None``."""
    if isinstance(score, bool) or not isinstance(score, (int, float, np.floating, np.integer)):
        return f"score must be a number, got {score!r}"
    value = float(score)
    if math.isnan(value):
        return "score is NaN"
    if not 0.0 <= value <= MAX_SCORE:
        return f"score {value!r} is outside [0, 1]"
    return None


def sample_count_problem(num_samples: Any) -> str | None:
    """Why a sample count is unusable (not a positive integer), or ``None``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
        return f"num_samples must be a positive integer, got {num_samples!r}"
    return None


def capped_shares(weights: Sequence[float], max_share: float) -> list[float]:
    """Shares of ``weights`` with no share above ``max_share``, the excess spread over the others.

    Water-filling: shares above the cap are set to it and the rest renormalized among the uncapped ones,
    repeated until none exceeds it. The cap always holds: when ``max_share * len(weights) < 1`` every site
    gets ``max_share`` and the shares sum to less than 1 (the aggregator leaves the rest with the current
    global model), so fewer sites than ``1 / max_share`` cannot take the model either.

    Example:
        >>> capped_shares([8.0, 1.0, 1.0], 0.5)
        [0.5, 0.25, 0.25]
        >>> capped_shares([8.0, 1.0], 0.4)
        [0.4, 0.4]
    """
    values = np.asarray(list(weights), dtype=np.float64)
    if values.size == 0:
        return []
    if not 0.0 < max_share <= 1.0:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    if max_share * values.size <= 1.0 + 1e-12 or values.sum() <= 0:
        return [min(max_share, 1.0 / values.size)] * values.size
    shares = values / values.sum()
    capped = np.zeros(values.size, dtype=bool)
    while np.any(shares[~capped] > max_share + 1e-12):
        capped |= shares > max_share + 1e-12
        free = 1.0 - max_share * capped.sum()
        rest = values[~capped]
        shares = np.where(capped, max_share, 0.0)
        if rest.sum() > 0:
            shares[~capped] = free * rest / rest.sum()
        else:
            shares[~capped] = free / max(int((~capped).sum()), 1)
    return shares.tolist()
