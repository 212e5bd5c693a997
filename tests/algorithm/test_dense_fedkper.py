"""Dense FedKPer (docs/design.md, Dense FedKPer) against hand computations: the loss on a tiny 3D tensor, voxel flips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedkper_monai.algorithm import KnowledgePersonalizationLoss, VoxelFlipTracker
from fedkper_monai.algorithm.dense_loss import DiceCESupervisedLoss, supervised_loss

# One case, 2 classes, a 1 x 1 x 2 volume: voxel 0 is background, voxel 1 foreground.
STUDENT = torch.tensor([[[[[1.0, 0.0]]], [[[0.0, 2.0]]]]])  # (N=1, C=2, 1, 1, 2)
TEACHER = torch.tensor([[[[[0.0, 0.0]]], [[[1.0, 1.0]]]]])
LABELS = torch.tensor([[[[0, 1]]]])  # (N=1, 1, 1, 2)


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    norm = math.log(sum(math.exp(v - top) for v in row)) + top
    return [v - norm for v in row]


def _hand_terms() -> tuple[float, float, float]:
    """Per voxel by hand: student rows (1, 0) and (0, 2); teacher rows (0, 1) and (0, 1); labels 0 and 1."""
    student = [[1.0, 0.0], [0.0, 2.0]]
    teacher = [[0.0, 1.0], [0.0, 1.0]]
    labels = [0, 1]
    ce = -sum(_log_softmax(s)[y] for s, y in zip(student, labels)) / 2
    teacher_ce = -sum(_log_softmax(t)[y] for t, y in zip(teacher, labels)) / 2
    kl = 0.0
    for s, t in zip(student, teacher):
        log_s, log_t = _log_softmax(s), _log_softmax(t)
        kl += sum(math.exp(lt) * (lt - ls) for ls, lt in zip(log_s, log_t))
    return ce, min(1 / (teacher_ce + 1e-8), 10.0), kl / 2


def test_dense_loss_equals_the_hand_computation_over_voxels():
    ce, beta, kl = _hand_terms()
    loss = KnowledgePersonalizationLoss()(STUDENT, LABELS, TEACHER)
    assert loss.item() == pytest.approx(ce + beta * kl, abs=1e-6)


def test_dice_ce_supervised_term_replaces_ce_and_keeps_beta_and_kl():
    _, beta, kl = _hand_terms()
    # MONAI DiceCELoss: CE (voxel mean) + (1 - Dice) averaged over classes, with 1e-5 smoothing.
    ce, _, _ = _hand_terms()
    probabilities = [[math.exp(v) for v in _log_softmax(row)] for row in ([1.0, 0.0], [0.0, 2.0])]
    onehot = [[1, 0], [0, 1]]
    dice_loss = 0.0
    for c in range(2):
        intersection = sum(p[c] * y[c] for p, y in zip(probabilities, onehot))
        total = sum(p[c] for p in probabilities) + sum(y[c] for y in onehot)
        dice_loss += 1 - (2 * intersection + 1e-5) / (total + 1e-5)
    expected = ce + dice_loss / 2 + beta * kl
    loss_fn = KnowledgePersonalizationLoss(supervised=DiceCESupervisedLoss())
    assert loss_fn(STUDENT, LABELS, TEACHER).item() == pytest.approx(expected, abs=1e-5)
    assert loss_fn.beta == pytest.approx(beta, rel=1e-6) and loss_fn.kl == pytest.approx(kl, abs=1e-6)


def test_supervised_loss_names():
    assert supervised_loss("ce")(STUDENT, LABELS).item() == pytest.approx(_hand_terms()[0], abs=1e-6)
    with pytest.raises(ValueError, match="dice_ce"):
        supervised_loss("dice")


def test_voxel_flips_on_hand_built_volumes():
    labels = np.array([[[0, 1, 1], [2, 2, 0]]])  # one 2 x 3 case: foreground 1, 1, 2, 2
    first = np.array([[[0, 1, 0], [2, 2, 2]]])  # right on foreground voxels 1, 2, 2 (class 1 once wrong)
    second = np.array([[[1, 0, 1], [2, 0, 0]]])  # right on 1 (the other one now), 2 (first): lost 1 and 2
    tracker = VoxelFlipTracker(num_classes=3)
    result = tracker.update(["case-a"], first == labels, labels)
    assert (result.positive_flips, result.negative_flips, result.num_evaluated) == (3, 0, 4)
    result = tracker.update(["case-a"], second == labels, labels)
    # foreground in C order: (0,1) class 1: right -> wrong; (0,2) class 1: wrong -> right;
    # (1,0) class 2: right -> right; (1,1) class 2: right -> wrong.
    assert (result.negative_flips, result.positive_flips, result.unchanged) == (2, 1, 1)
    assert result.nfr == pytest.approx(0.5)
    assert result.per_class_forgetting == [0.5, 0.5]
    restored = VoxelFlipTracker(num_classes=3)
    restored.load_state_dict(tracker.state_dict())
    again = restored.update(["case-a"], second == labels, labels)
    assert (again.negative_flips, again.positive_flips) == (0, 0)


def test_voxel_flip_tracker_refuses_bad_input():
    tracker = VoxelFlipTracker(num_classes=2)
    with pytest.raises(ValueError, match="outside"):
        tracker.update(["a"], np.ones((1, 2), bool), np.array([[0, 2]]))
    with pytest.raises(ValueError, match="twice"):
        tracker.update(["a", "a"], np.ones((2, 2), bool), np.zeros((2, 2), int))
    with pytest.raises(ValueError):
        VoxelFlipTracker(num_classes=1)
