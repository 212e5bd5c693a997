"""The segmentation task behind the task seam: Dice reliability, score over foreground classes, networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkper_monai.algorithm import fedkper_score, label_diversity
from fedkper_monai.training import build_network
from fedkper_monai.training.segmentation import dice_per_case
from fedkper_monai.training.tasks import make_task


def test_dice_reliability_on_hand_built_volumes():
    task = make_task("segmentation")
    labels = np.zeros((2, 4, 4), dtype=np.int64)
    labels[0, :2, :2] = 1  # case 0: class 1 (4 voxels) and class 2 (4 voxels)
    labels[0, 2:, 2:] = 2
    labels[1, :2, :] = 1  # case 1: class 1 only (8 voxels)
    predictions = labels.copy()
    predictions[0, 0, 0] = 0  # class 1 of case 0: 3 of 4 found -> Dice 2*3 / (3 + 4) = 6/7
    predictions[1, 3, 3] = 2  # a class-2 voxel in case 1, which has no class 2: not counted
    dice = dice_per_case(labels, predictions, 3)
    assert dice[0] == pytest.approx([6 / 7, 1.0])
    assert dice[1, 0] == pytest.approx(1.0) and np.isnan(dice[1, 1])
    mean, balanced = task.summary(labels, predictions)
    assert mean == pytest.approx(((6 / 7 + 1.0) / 2 + 1.0) / 2)  # per case, over the classes it holds
    assert balanced == pytest.approx(((6 / 7 + 1.0) / 2 + 1.0) / 2)  # class 1 over 2 cases, class 2 over 1
    assert task.reliability(mean) == mean


def test_score_uses_dice_and_diversity_over_foreground_classes():
    task = make_task("segmentation")
    entries = [{"class_voxels": [100, 30, 10]}, {"class_voxels": [50, 10, 30]}]
    histogram = task.label_histogram(entries, 3)
    assert histogram == [40, 40]  # background left out
    assert fedkper_score(0.8, histogram, len(histogram)) == pytest.approx(0.8 * (1e-6 + 1.0))
    # One foreground class: diversity 0.
    assert label_diversity([40], 1) == 0.0


def test_task_shapes_and_checks():
    task = make_task("segmentation", supervised_loss="dice_ce")
    labels = torch.zeros(2, 1, 4, 4, 4)
    targets = task.targets(labels, 2)
    assert targets.shape == (2, 4, 4, 4) and targets.dtype == torch.long
    task.check_outputs(torch.zeros(2, 3, 4, 4, 4), targets, 3)
    with pytest.raises(ValueError, match="expected"):
        task.check_outputs(torch.zeros(2, 3), targets, 3)
    assert task.supervised_criterion() is not None and make_task("segmentation").supervised_criterion() is None
    with pytest.raises(ValueError):
        make_task("segmentation", supervised_loss="focal")


@pytest.mark.parametrize("name", ["unet", "segresnet"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_segmentation_networks_by_name(name, spatial_dims):
    net = build_network(name, spatial_dims=spatial_dims, in_channels=1, num_classes=3, image_size=[16] * spatial_dims)
    assert net(torch.zeros(1, 1, *[16] * spatial_dims)).shape == (1, 3, *[16] * spatial_dims)
    with pytest.raises(ValueError, match="multiple"):
        build_network(name, spatial_dims=spatial_dims, in_channels=1, num_classes=3, image_size=[12] * spatial_dims)
