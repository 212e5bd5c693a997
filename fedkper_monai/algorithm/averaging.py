"""Streaming weighted average of model state dicts (pure torch, no I/O).

The server adds each site's weights as they arrive and keeps one running sum, so its memory
does not grow with the number of sites (see ``benchmarks/bench_aggregation.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

import numpy as np
import torch

__all__ = ["WeightedAverager"]

Array = Union[torch.Tensor, np.ndarray]


class WeightedAverager:
    """Weighted average of state dicts, accumulated one model at a time.

    ``result()[k] = sum_i w_i * sd_i[k] / sum_i w_i``, so the weights need not be normalized.

    Accumulators: one per key, ``accumulate_dtype`` (float64 by default; complex128 for complex
    tensors), on the device of the first model's tensor. float64 keeps the streamed sum equal to
    the direct one to ~1e-12 whatever the order and number of sites; it costs 2x a float32 model
    of memory, constant in the number of sites. Pass ``torch.float32`` to halve that.

    Integer and bool tensors (BatchNorm's ``num_batches_tracked``, masks) are averaged like the
    others and rounded to the nearest integer (ties to even) in their own dtype. For
    ``num_batches_tracked`` this is the weighted-typical count of batches the sites have seen,
    which is what BatchNorm with ``momentum=None`` expects; taking the max would let one site
    with many batches shrink everyone's cumulative-average updates. For bool it is a weighted
    majority vote.

    Values may be torch tensors or numpy arrays; ``result()`` returns the same kind, dtype and
    shape per key as the first model added (tensors on the accumulator's device).

    Example:
        >>> averager = WeightedAverager()
        >>> averager.add({"w": torch.tensor([0.0, 2.0])}, weight=1.0)
        >>> averager.add({"w": torch.tensor([4.0, 6.0])}, weight=3.0)
        >>> averager.result()["w"]
        tensor([3., 5.])
    """

    def __init__(self, accumulate_dtype: torch.dtype = torch.float64) -> None:
        if accumulate_dtype not in (torch.float64, torch.float32):
            raise ValueError(f"accumulate_dtype must be torch.float64 or torch.float32, got {accumulate_dtype}")
        self.accumulate_dtype = accumulate_dtype
        self.reset()

    def reset(self) -> None:
        """Forget every model added so far."""
        self._sums: dict[str, torch.Tensor] = {}
        # key -> (is_numpy, original dtype (torch or numpy), shape)
        self._layout: dict[str, tuple[bool, object, tuple[int, ...]]] = {}
        self._count = 0
        self._total_weight = 0.0

    @property
    def count(self) -> int:
        """Number of models added since the last reset."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Sum of the weights added since the last reset."""
        return self._total_weight

    def add(self, state_dict: Mapping[str, Array], weight: float) -> None:
        """Add one model's weights with ``weight`` to the running sum.

        Args:
            state_dict: key -> tensor or numpy array. Keys and shapes must match the first model.
            weight: a finite, non-negative weight (a score, a sample count, a normalized weight).

        Raises:
            ValueError: bad weight, an empty state dict, a missing or extra key, a shape mismatch,
                or a value that is not a tensor or array. Nothing is added then.
        """
        weight = float(weight)
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be finite and non-negative, got {weight}")
        if not state_dict:
            raise ValueError("state_dict is empty")
        tensors = {key: self._as_tensor(key, value) for key, value in state_dict.items()}
        if self._count == 0:
            self._start(state_dict, tensors)
        else:
            self._check_matches(tensors)
        # Validate everything before touching the sums, so a bad model leaves no partial trace.
        with torch.no_grad():
            for key, tensor in tensors.items():
                total = self._sums[key]
                total.add_(tensor.detach().to(total.device), alpha=weight)
        self._count += 1
        self._total_weight += weight

    def result(self) -> dict[str, Array]:
        """The weighted average so far, in the first model's key order, kinds and dtypes.

        Raises:
            ValueError: nothing was added, or the total weight is 0.
        """
        if self._count == 0:
            raise ValueError("result() called before any model was added")
        if self._total_weight <= 0:
            raise ValueError(f"total weight is {self._total_weight}: cannot average {self._count} models")
        averaged: dict[str, Array] = {}
        for key, total in self._sums.items():
            is_numpy, dtype, _ = self._layout[key]
            mean = total / self._total_weight
            torch_dtype = _torch_dtype(dtype) if is_numpy else dtype
            if not (torch_dtype.is_floating_point or torch_dtype.is_complex):
                mean = torch.round(mean)
            out = mean.to(torch_dtype)
            averaged[key] = out.cpu().numpy() if is_numpy else out
        return averaged

    def _as_tensor(self, key: str, value: Array) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, np.ndarray):
            # ascontiguousarray turns a 0-d array (a scalar buffer) into shape (1,): keep its shape.
            return torch.from_numpy(np.ascontiguousarray(value).reshape(value.shape))
        raise ValueError(f"{key}: expected a torch.Tensor or numpy.ndarray, got {type(value).__name__}")

    def _start(self, state_dict: Mapping[str, Array], tensors: dict[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            original = state_dict[key]
            is_numpy = isinstance(original, np.ndarray)
            self._layout[key] = (is_numpy, original.dtype, tuple(tensor.shape))
            acc_dtype = torch.complex128 if tensor.is_complex() else self.accumulate_dtype
            if tensor.is_complex() and self.accumulate_dtype == torch.float32:
                acc_dtype = torch.complex64
            self._sums[key] = torch.zeros(tensor.shape, dtype=acc_dtype, device=tensor.device)

    def _check_matches(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = [key for key in self._layout if key not in tensors]
        if missing:
            raise ValueError(f"state_dict lacks key(s) of the first model: {missing}")
        extra = [key for key in tensors if key not in self._layout]
        if extra:
            raise ValueError(f"state_dict has key(s) the first model lacks: {extra}")
        for key, tensor in tensors.items():
            expected = self._layout[key][2]
            if tuple(tensor.shape) != expected:
                raise ValueError(
                    f"{key}: shape {tuple(tensor.shape)} does not match the first model's shape {expected}"
                )


def _torch_dtype(numpy_dtype: object) -> torch.dtype:
    """The torch dtype of a numpy dtype (through an empty array, so every mapping torch knows works)."""
    return torch.from_numpy(np.empty(0, dtype=numpy_dtype)).dtype
