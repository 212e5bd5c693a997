"""The teacher-logit source of a round (training.teacher_logits) on its own, with a real ReferenceCNN teacher."""

from __future__ import annotations

import pytest
import torch

from fedkper_monai.training import ReferenceCNN, frozen_copy
from fedkper_monai.training.teacher_logits import TeacherLogits, batch_ids


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return frozen_copy(ReferenceCNN(spatial_dims=2, in_channels=1, num_classes=3, image_size=(8, 8), conv_channels=(4, 8), hidden_units=8))


def _batch(ids: list[str]) -> tuple[dict, torch.Tensor]:
    images = torch.randn(len(ids), 1, 8, 8, generator=torch.Generator().manual_seed(len(ids)))
    return {"image": images, "id": ids}, images


def test_no_teacher_gives_no_logits_and_no_passes():
    source = TeacherLogits(None, cache=True)
    batch, images = _batch(["a", "b"])
    assert source(batch, images, epoch=0) is None and source.forward_passes == 0


def test_cached_logits_are_the_first_epochs_and_cost_one_pass():
    teacher = _teacher()
    source = TeacherLogits(teacher, cache=True)
    batch, images = _batch(["a", "b", "c"])
    first = source(batch, images, epoch=0)
    again = source(batch, torch.zeros_like(images), epoch=1)  # later epochs: the cache, not these images
    assert torch.equal(first, again) and source.forward_passes == 1
    assert torch.allclose(first, teacher(images))
    plain = TeacherLogits(teacher)
    for epoch in (0, 1):
        plain(batch, images, epoch=epoch)
    assert plain.forward_passes == 2


def test_an_id_twice_in_the_first_epoch_is_refused():
    source = TeacherLogits(_teacher(), cache=True)
    batch, images = _batch(["a", "a"])
    with pytest.raises(ValueError, match="sample id 'a' appears twice in one epoch"):
        source(batch, images, epoch=0)


def test_batch_ids_from_tensors_or_positions():
    assert batch_ids({"id": torch.tensor([3, 4])}, 2) == ["3", "4"]
    assert batch_ids({}, 2, start=5) == ["5", "6"]
    with pytest.raises(ValueError, match="needs an 'id' per sample"):
        batch_ids({}, 2)
    with pytest.raises(ValueError, match="2 ids for 3 samples"):
        batch_ids({"id": ["a", "b"]}, 3)
