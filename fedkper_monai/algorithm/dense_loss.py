"""The supervised term of dense (segmentation) objectives: cross-entropy or Dice + cross-entropy.

docs/design.md, Dense FedKPer: ``sup = CE(s, y)`` (voxel mean) or ``DiceCE(s, y)``, configurable; the distillation term
and ``beta`` stay those of :class:`~fedkper_monai.algorithm.loss.KnowledgePersonalizationLoss`. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch.nn.modules.loss import _Loss

__all__ = ["SUPERVISED_LOSSES", "DiceCESupervisedLoss", "supervised_loss"]

#: Names accepted by :func:`supervised_loss`.
SUPERVISED_LOSSES: tuple[str, ...] = ("ce", "dice_ce")


class DiceCESupervisedLoss(_Loss):
    """MONAI's ``DiceCELoss`` (softmax Dice + cross-entropy, equal weights) on class-index targets.

    Args:
        include_background: whether the Dice part counts class 0 (the cross-entropy always does).

    Shapes:
        logits ``(N, C, *spatial)``, targets ``(N, *spatial)`` or ``(N, 1, *spatial)`` class indices;
        returns a scalar.

    Example:
        >>> loss = DiceCESupervisedLoss()
        >>> float(loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))) > 0
        True
    """

    def __init__(self, include_background: bool = True) -> None:
        super().__init__()
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == logits.dim() - 1:
            targets = targets.unsqueeze(1)
        return self.dice_ce(logits.float(), targets)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.dim() == logits.dim():
        targets = targets.squeeze(1)
    return F.cross_entropy(logits.float(), targets.long())


def supervised_loss(name: str = "ce") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The supervised term called ``name``: ``"ce"`` (voxel-mean cross-entropy) or ``"dice_ce"``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    if name == "ce":
        return _cross_entropy
    if name == "dice_ce":
        return DiceCESupervisedLoss()
    raise ValueError(f"unknown supervised loss {name!r}; valid names: {', '.join(SUPERVISED_LOSSES)}")
