"""Conversions between torch state dicts and the numpy dicts that travel in FLARE messages.

Weights cross the wire as numpy arrays so that no torch decomposer is needed at either end.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

__all__ = ["to_numpy", "to_torch", "payload_bytes"]


def to_numpy(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Copy a state dict to CPU numpy arrays (same keys, same dtypes)."""
    return {key: value.detach().cpu().numpy().copy() for key, value in state_dict.items()}


def to_torch(params: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Turn numpy weights back into tensors (on CPU) for ``load_state_dict``."""
    return {key: torch.as_tensor(np.asarray(value)) for key, value in params.items()}


def payload_bytes(params: Mapping[str, np.ndarray]) -> int:
    """Bytes of raw tensor data in ``params``: the per-message size we report as communication cost."""
    return int(sum(np.asarray(value).nbytes for value in params.values()))
