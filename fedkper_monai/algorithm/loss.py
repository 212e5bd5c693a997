"""Local training objectives: FedKPer's knowledge-personalization loss and two baselines.

- :class:`KnowledgePersonalizationLoss` (FedKPer): CE plus a distillation term toward the
  global model whose weight is the inverse of the global model's CE on the batch.
- :class:`NotTrueDistillationLoss` (FedNTD, Lee et al., NeurIPS 2022): CE plus distillation
  toward the global model over the not-true classes only.
- :func:`proximal_term` (FedProx): ``mu / 2 * ||w - w_g||^2``.

All take classification logits ``(N, C)`` with targets ``(N,)`` or ``(N, 1)``, and dense logits
``(N, C, *spatial)`` with targets ``(N, *spatial)`` or ``(N, 1, *spatial)``. Dense inputs are
averaged over samples and voxels alike: each voxel is one "sample" of the batch mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["KnowledgePersonalizationLoss", "NotTrueDistillationLoss", "proximal_term"]


def _class_targets(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Validate shapes; return the targets as ``(N, *spatial)`` long class indices.

    Integral floating targets (MONAI label images) are cast to long.
    """
    if logits.dim() < 2:
        raise ValueError(f"logits must have shape (N, C) or (N, C, *spatial), got {tuple(logits.shape)}")
    if teacher_logits.shape != logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} does not match logits shape {tuple(logits.shape)}"
        )
    batch, spatial = logits.shape[0], tuple(logits.shape[2:])
    if tuple(targets.shape) == (batch, 1) + spatial:
        targets = targets.squeeze(1)
    if tuple(targets.shape) != (batch,) + spatial:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)}: "
            f"expected {(batch,) + spatial} or {(batch, 1) + spatial}"
        )
    if targets.is_floating_point():
        if not torch.equal(targets, torch.round(targets)):
            raise ValueError("targets must hold class indices; got non-integral floating values")
        targets = targets.long()
    elif targets.dtype != torch.long:
        targets = targets.long()
    return targets


def _flatten(
    logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate shapes and flatten to ``(M, C)`` student/teacher logits and ``(M,)`` class targets.

    ``M = N * prod(spatial)``. Logits are promoted to float32 (AMP gives float16), the teacher
    is detached, and integral floating targets (MONAI label images) are cast to long.
    """
    targets = _class_targets(logits, targets, teacher_logits)
    num_classes = logits.shape[1]

    def to_rows(x: torch.Tensor) -> torch.Tensor:
        # (N, C, *spatial) -> (N * prod(spatial), C): classes last so each voxel is one row.
        return x.float().movedim(1, -1).reshape(-1, num_classes)

    return to_rows(logits), targets.reshape(-1), to_rows(teacher_logits.detach())


def _distillation(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))``, summed over classes (dim 1), mean over
    samples and voxels: ``(M, C)`` rows or ``(N, C, *spatial)`` logits alike."""
    log_p_student = F.log_softmax(student / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher / tau, dim=1)
    # log_target avoids log(0) when the teacher is very confident.
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True) / (student.numel() // student.shape[1])
    return tau**2 * kl


class KnowledgePersonalizationLoss(_Loss):
    """FedKPer's local objective: ``CE(s, y) + beta * tau^2 * KL(softmax(t/tau) || softmax(s/tau))``.

    ``beta = min(1 / (CE(t, y) + 1e-8), lambda_max)`` is computed from the teacher (the frozen
    global model) and carries no gradient: where the global model already explains the batch,
    the site aligns strongly with it; where it does not, the site personalizes.

    The last batch's ``ce``, ``kl`` (the unweighted distillation term) and ``beta`` are exposed as
    python floats for logging (NaN before the first batch); they are read from the device only
    when accessed, so training does not wait on a device sync every batch.

    Args:
        tau: softmax temperature, > 0.
        lambda_max: upper bound of ``beta``, >= 0.
        supervised: the supervised term ``sup(logits, targets)`` with ``targets`` ``(N, *spatial)`` class
            indices, e.g. :class:`~fedkper_monai.algorithm.dense_loss.DiceCESupervisedLoss` for segmentation
            (docs/design.md, Dense FedKPer); ``None`` is cross-entropy (the ``ce`` reported is then that term). ``beta``
            always comes from the teacher's cross-entropy.

    Example:
        >>> loss_fn = KnowledgePersonalizationLoss()
        >>> logits = torch.tensor([[2.0, 0.0]], requires_grad=True)
        >>> loss = loss_fn(logits, torch.tensor([0]), logits.detach())
        >>> round(loss.item(), 4) == round(loss_fn.ce, 4)  # student == teacher: no KL
        True
    """

    def __init__(
        self, tau: float = 1.0, lambda_max: float = 10.0, supervised: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if not lambda_max >= 0:
            raise ValueError(f"lambda_max must be non-negative, got {lambda_max}")
        self.tau = float(tau)
        self.lambda_max = float(lambda_max)
        self.supervised = supervised
        self._last: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Loss of one batch.

        Args:
            logits: student logits, ``(N, C)`` or ``(N, C, *spatial)``.
            targets: class indices, ``(N,)``/``(N, 1)`` or ``(N, *spatial)``/``(N, 1, *spatial)``.
            teacher_logits: the global model's logits, same shape as ``logits``; no gradient flows to it.

        Returns:
            A scalar tensor (float32).

        Raises:
            ValueError: shapes that do not fit (the message names both shapes).
        """
        labels = _class_targets(logits, targets, teacher_logits)
        # Classes stay on dim 1 (no per-voxel rows): the same means without copying dense logits, which made
        # a 3D UNet step 1.3x slower (benchmarks/bench_seg.py).
        student, teacher = logits.float(), teacher_logits.detach().float()
        if self.supervised is None:
            ce = F.cross_entropy(student, labels)
        else:
            ce = self.supervised(student, labels)
        with torch.no_grad():
            teacher_ce = F.cross_entropy(teacher, labels)
            beta = torch.clamp(1.0 / (teacher_ce + 1e-8), max=self.lambda_max)
        kl = _distillation(student, teacher, self.tau)
        self._last = {"ce": ce.detach(), "kl": kl.detach(), "beta": beta}
        return ce + beta * kl

    def _value(self, name: str) -> float:
        # NaN before the first forward(): an AttributeError would be masked by nn.Module.__getattr__.
        return float(self._last[name].item()) if name in self._last else math.nan

    @property
    def ce(self) -> float:
        """Cross-entropy of the student on the last batch."""
        return self._value("ce")

    @property
    def kl(self) -> float:
        """``tau^2 * KL`` of the last batch, before weighting by ``beta``."""
        return self._value("kl")

    @property
    def beta(self) -> float:
        """The distillation weight of the last batch."""
        return self._value("beta")


class NotTrueDistillationLoss(_Loss):
    """FedNTD's local objective: ``CE(s, y) + beta * tau^2 * KL(q_t || q_s)`` over the not-true classes.

    ``q = softmax(logits_without_true_class / tau)`` over the remaining ``C - 1`` classes, for the
    student (``q_s``) and the global-model teacher (``q_t``); the KL is summed over classes and
    averaged over samples (and voxels). Preserves the global model's view of the classes a
    sample does not belong to, which label skew would otherwise overwrite.

    Args:
        tau: softmax temperature, > 0.
        beta: weight of the not-true distillation term, >= 0.

    Example:
        >>> loss_fn = NotTrueDistillationLoss(tau=1.0, beta=1.0)
        >>> logits = torch.tensor([[2.0, 0.0, 1.0]])
        >>> float(loss_fn(logits, torch.tensor([0]), logits)) == float(F.cross_entropy(logits, torch.tensor([0])))
        True
    """

    def __init__(self, tau: float = 1.0, beta: float = 1.0) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if not beta >= 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        self.tau = float(tau)
        self.beta = float(beta)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Loss of one batch; shapes as in :meth:`KnowledgePersonalizationLoss.forward` (C >= 2)."""
        student, labels, teacher = _flatten(logits, targets, teacher_logits)
        num_classes = student.shape[1]
        if num_classes < 2:
            raise ValueError(f"not-true distillation needs at least 2 classes, got logits shape {tuple(logits.shape)}")
        ce = F.cross_entropy(student, labels)
        not_true = torch.ones_like(student, dtype=torch.bool)
        not_true.scatter_(1, labels.unsqueeze(1), False)
        # Boolean indexing keeps row order and, per row, class order: (M, C - 1).
        student_nt = student[not_true].reshape(-1, num_classes - 1)
        teacher_nt = teacher[not_true].reshape(-1, num_classes - 1)
        return ce + self.beta * _distillation(student_nt, teacher_nt, self.tau)


def proximal_term(
    model_parameters: Iterable[torch.Tensor], global_parameters: Iterable[torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's proximal term ``mu / 2 * sum_i ||w_i - w_g,i||^2``; no gradient flows to ``w_g``.

    Args:
        model_parameters: the local model's parameters (e.g. ``model.parameters()``).
        global_parameters: the global model's parameters in the same order and shapes.
        mu: proximal weight, >= 0.

    Returns:
        A scalar tensor on the device of the first parameter (0.0 for no parameters).

    Raises:
        ValueError: negative ``mu``, different numbers of tensors, or a shape mismatch.

    Example:
        >>> proximal_term([torch.tensor([1.0, 2.0])], [torch.tensor([0.0, 0.0])], mu=0.1)
        tensor(0.2500)
    """
    if not mu >= 0:
        raise ValueError(f"mu must be non-negative, got {mu}")
    local, reference = list(model_parameters), list(global_parameters)
    if len(local) != len(reference):
        raise ValueError(f"model has {len(local)} parameter tensors but the global model has {len(reference)}")
    if not local:
        return torch.tensor(0.0)
    total = torch.zeros((), dtype=torch.float32, device=local[0].device)
    for index, (w, w_global) in enumerate(zip(local, reference)):
        if w.shape != w_global.shape:
            raise ValueError(
                f"parameter {index}: shape {tuple(w.shape)} does not match global shape {tuple(w_global.shape)}"
            )
        total = total + torch.sum((w.float() - w_global.detach().to(w.device).float()) ** 2)
    return (mu / 2) * total
