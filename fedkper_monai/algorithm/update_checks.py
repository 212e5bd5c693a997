"""Checks of one site update against the global model, before it touches any sum (pure numpy, no I/O).

DESIGN §4: dtypes castable to the global model's (complex, object, string refused), finite values,
expected keys and shapes, a bounded norm relative to the global model, a score in [0, 1], a positive
sample count not above what the site registered. Every function returns the reason to drop the update
(a string) or the cleaned value; nothing here logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_SCORE",
    "DEFAULT_MAX_NORM_RATIO",
    "cast_to_reference",
    "norm_ratio",
    "score_problem",
    "sample_count_problem",
    "capped_shares",
]

# accuracy 1 on a perfectly class-balanced site scores 1 * (1 + eps): allow that eps (fedkper_score's default).
MAX_SCORE = 1.0 + 1e-6
# ||w_site - w_global|| / ||w_global||: a few local epochs of SGD move a model by a fraction of its norm;
# 10x its norm is far beyond honest training and still stops a 1e30 update from taking the model.
DEFAULT_MAX_NORM_RATIO = 10.0
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


def norm_ratio(params: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """``||params - reference|| / max(||reference||, 1)`` over the floating-point keys (float64 sums).

    The floor of 1 keeps a near-zero global model (zero-initialized layers) from making every update huge.
    """
    distance = 0.0
    size = 0.0
    for name, expected in reference.items():
        if expected.dtype.kind != "f":
            continue  # counters such as BatchNorm's num_batches_tracked say nothing about influence
        base = expected.astype(np.float64)
        distance += float(np.sum((params[name].astype(np.float64) - base) ** 2))
        size += float(np.sum(base**2))
    return math.sqrt(distance) / max(math.sqrt(size), 1.0)


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
    """Normalized shares of ``weights`` with no share above ``max_share`` (the excess spread over the others).

    Water-filling: shares above the cap are set to it and the rest renormalized among the uncapped ones,
    repeated until none exceeds it. When ``max_share * len(weights) < 1`` no cap can hold and every site
    gets ``1 / len(weights)``.

    Example:
        >>> capped_shares([8.0, 1.0, 1.0], 0.5)
        [0.5, 0.25, 0.25]
    """
    values = np.asarray(list(weights), dtype=np.float64)
    if values.size == 0:
        return []
    if not 0.0 < max_share <= 1.0:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    if max_share * values.size < 1.0 or values.sum() <= 0:
        return [1.0 / values.size] * values.size
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
