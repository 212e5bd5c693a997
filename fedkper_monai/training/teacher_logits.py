"""The frozen global model's logits of each training batch, computed or taken from a per-sample cache.

FedNTD and FedKPer distil from the received global model (the teacher). Its logits of a sample do not change
within a round, so with deterministic training transforms they are computed once per sample in the first
epoch and reused in the later ones (:class:`TeacherLogits` with ``cache=True``), keyed by the batch ``"id"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["TeacherLogits", "batch_ids", "teacher_forward"]


def teacher_forward(teacher: nn.Module, images: torch.Tensor, use_amp: bool) -> torch.Tensor:
    """The teacher's fp32 logits of ``images`` (no gradients; float16 autocast with ``use_amp``)."""
    with torch.no_grad(), torch.autocast(device_type=images.device.type, dtype=torch.float16, enabled=use_amp):
        return teacher(images).float()


def batch_ids(batch: Mapping[str, Any], batch_size: int, start: int | None = None) -> list[str]:
    """The batch's sample ids as strings; positional ids from ``start`` when the batch has none.

    Raises:
        ValueError: as many ids as samples are not given, or no ids and no ``start``.
    """
    if "id" in batch:
        raw = batch["id"]
        # Integer ids collate into a tensor; str(tensor(3)) would be "tensor(3)".
        ids = [str(sample_id) for sample_id in (raw.tolist() if isinstance(raw, torch.Tensor) else raw)]
        if len(ids) != batch_size:
            raise ValueError(f"batch has {len(ids)} ids for {batch_size} samples")
        return ids
    if start is None:
        raise ValueError("teacher-logit caching needs an 'id' per sample in every batch")
    return [str(start + offset) for offset in range(batch_size)]


class TeacherLogits:
    """Teacher logits for the batches of one round of local training.

    Args:
        teacher: the frozen global model (eval mode, on the batches' device); ``None`` when the local objective
            uses no teacher logits (then every call returns ``None``).
        cache: reuse each sample's logits of the first epoch in later epochs (only valid with deterministic
            training transforms; needs a unique ``"id"`` per sample).
        use_amp: float16 autocast for the teacher's forward passes.

    Attributes:
        forward_passes: teacher batch forward passes so far (with caching: one epoch's worth).
    """

    def __init__(self, teacher: nn.Module | None, *, cache: bool = False, use_amp: bool = False) -> None:
        self.teacher = teacher
        self.use_amp = use_amp
        self.forward_passes = 0
        self._cache: dict[str, torch.Tensor] | None = {} if cache and teacher is not None else None

    def __call__(self, batch: Mapping[str, Any], images: torch.Tensor, epoch: int) -> torch.Tensor | None:
        """Logits ``(B, C, ...)`` of ``images``, the tensors of ``batch`` in local epoch ``epoch`` (0-based).

        Raises:
            ValueError: with caching, a batch without ids or a sample id seen twice in the first epoch.
        """
        if self.teacher is None:
            return None
        if self._cache is None:
            return self._forward(images)
        ids = batch_ids(batch, images.shape[0])
        if epoch == 0:
            self._check_unique(ids)
        if all(sample_id in self._cache for sample_id in ids):
            return torch.stack([self._cache[sample_id] for sample_id in ids])
        logits = self._forward(images)
        self._cache.update(zip(ids, logits))
        return logits

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        self.forward_passes += 1
        return teacher_forward(self.teacher, images, self.use_amp)

    def _check_unique(self, ids: list[str]) -> None:
        """A repeated id would hand one sample another's logits in the later epochs."""
        assert self._cache is not None
        repeated = [sample_id for sample_id in ids if sample_id in self._cache]
        if repeated or len(set(ids)) != len(ids):
            shown = repeated[0] if repeated else next(i for i in ids if ids.count(i) > 1)
            raise ValueError(
                f"sample id {shown!r} appears twice in one epoch: teacher-logit caching needs "
                "unique ids (or pass cache_teacher_logits=False)"
            )
