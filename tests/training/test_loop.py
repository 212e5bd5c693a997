"""The shared training loop and evaluation on real tensors through a torch DataLoader (the pipeline's batch format)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fedkper_monai.training import (
    FedAvgStrategy,
    FedKPerStrategy,
    FedProxStrategy,
    ReferenceCNN,
    evaluate,
    frozen_copy,
    make_optimizer,
    round_learning_rate,
    select_device,
    train_local,
)

CPU = torch.device("cpu")


def separable_samples(count: int, seed: int = 0, label_shape: tuple[int, ...] = ()) -> list[dict]:
    """Two classes of 1x8x8 images: class 0 bright on the left half, class 1 on the right, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        label = index % 2
        image = 0.3 * torch.randn(1, 8, 8, generator=generator)
        if label == 0:
            image[..., :4] += 1.0
        else:
            image[..., 4:] += 1.0
        samples.append({"image": image, "label": torch.tensor(label).reshape(label_shape), "id": f"case-{index:03d}"})
    return samples


def loader_over(samples: list[dict], batch_size: int = 6, shuffle: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(samples, batch_size=batch_size, shuffle=shuffle, generator=generator)


def small_cnn(seed: int = 0) -> ReferenceCNN:
    torch.manual_seed(seed)
    return ReferenceCNN(spatial_dims=2, in_channels=1, num_classes=2, image_size=(8, 8), conv_channels=(4, 8),
                        hidden_units=16)


def test_train_local_reduces_the_loss_on_a_separable_problem():
    samples = separable_samples(24)
    model = small_cnn()
    before = evaluate(model, loader_over(samples), device=CPU, num_classes=2)
    result = train_local(model, loader_over(samples, shuffle=True), FedAvgStrategy(), epochs=8,
                         optimizer=make_optimizer(model, lr=0.05), device=CPU)
    after = evaluate(model, loader_over(samples), device=CPU, num_classes=2)
    assert after.loss < 0.5 * before.loss
    assert after.accuracy == 1.0
    assert (result.epochs, result.steps, result.num_samples) == (8, 8 * 4, 24)
    assert math.isfinite(result.mean_loss) and result.teacher_forward_passes == 0
    assert set(result.stats) == {"ce"}
    assert model.training  # left in train mode by the loop


def run_fedkper(cache: bool) -> tuple[torch.nn.Module, object]:
    samples = separable_samples(20, seed=1)
    model = small_cnn(seed=3)
    teacher = frozen_copy(model)
    torch.manual_seed(11)
    result = train_local(model, loader_over(samples, batch_size=6, shuffle=True, seed=5), FedKPerStrategy(),
                         epochs=3, optimizer=make_optimizer(model, lr=0.05), device=CPU, teacher=teacher,
                         cache_teacher_logits=cache)
    return model, result


def test_cached_teacher_logits_are_computed_once_and_give_the_uncached_weights():
    cached_model, cached = run_fedkper(cache=True)
    plain_model, plain = run_fedkper(cache=False)
    batches_per_epoch = math.ceil(20 / 6)
    assert cached.teacher_forward_passes == batches_per_epoch
    assert plain.teacher_forward_passes == 3 * batches_per_epoch
    assert cached.steps == plain.steps == 3 * batches_per_epoch
    for (name, cached_param), plain_param in zip(cached_model.named_parameters(), plain_model.parameters()):
        # Shuffled batches differ between epochs; the teacher's per-sample logits do not (up to float rounding).
        assert torch.allclose(cached_param, plain_param, rtol=1e-5, atol=1e-6), name
    assert cached.stats == pytest.approx(plain.stats, rel=1e-5)
    assert set(cached.stats) == {"ce", "kl", "beta"} and cached.stats["beta"] > 0


def test_teacher_logit_caching_rejects_repeated_ids():
    samples = separable_samples(8)
    samples[5]["id"] = samples[1]["id"]
    model = small_cnn()
    with pytest.raises(ValueError, match="case-001.*unique ids"):
        train_local(model, loader_over(samples, batch_size=4), FedKPerStrategy(), epochs=2,
                    optimizer=make_optimizer(model), device=CPU, teacher=frozen_copy(model), cache_teacher_logits=True)


def test_train_local_requires_a_teacher_for_distillation_and_a_positive_epoch_count():
    model = small_cnn()
    loader = loader_over(separable_samples(4))
    with pytest.raises(ValueError, match="'fedkper' needs the frozen global model"):
        train_local(model, loader, FedKPerStrategy(), epochs=1, optimizer=make_optimizer(model), device=CPU)
    with pytest.raises(ValueError, match="epochs"):
        train_local(model, loader, FedAvgStrategy(), epochs=0, optimizer=make_optimizer(model), device=CPU)
    with pytest.raises(ValueError, match="empty training split"):
        train_local(model, loader_over([]), FedAvgStrategy(), epochs=1, optimizer=make_optimizer(model), device=CPU)


def test_fedprox_keeps_the_local_model_closer_to_the_global_model():
    samples = separable_samples(16)

    def distance_after(mu: float) -> float:
        model = small_cnn()
        start = [p.detach().clone() for p in model.parameters()]
        train_local(model, loader_over(samples), FedProxStrategy(mu=mu), epochs=4,
                    optimizer=make_optimizer(model, lr=0.05), device=CPU)
        return sum(((p - q) ** 2).sum().item() for p, q in zip(model.parameters(), start))

    assert distance_after(5.0) < 0.8 * distance_after(0.0)


def test_amp_request_on_cpu_trains_in_plain_fp32():
    samples = separable_samples(12)
    models = []
    for amp in (False, True):
        model = small_cnn()
        train_local(model, loader_over(samples), FedAvgStrategy(), epochs=2, optimizer=make_optimizer(model),
                    device=CPU, amp=amp, max_grad_norm=1.0)
        models.append(model)
    for first, second in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(first, second)


class FixedLogits(torch.nn.Module):
    """The 'image' of each sample is its logits: a hand-made model for exact metric checks."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Linear(1, 1)  # so .to()/.train() behave like a real model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_evaluate_accuracy_balanced_accuracy_and_loss_on_hand_made_predictions():
    labels = [0, 0, 0, 1, 2, 2]
    predicted = [0, 0, 1, 1, 2, 0]
    samples = []
    for index, (label, prediction) in enumerate(zip(labels, predicted)):
        logits = torch.zeros(1, 4)  # 4 classes in the task, class 3 absent from the labels
        logits[0, prediction] = 2.0
        samples.append({"image": logits, "label": torch.tensor([label]), "id": index})  # (B, 1) labels, int ids
    model = FixedLogits()
    model.train()
    result = evaluate(model, loader_over(samples, batch_size=4), device=CPU, num_classes=4)

    assert result.ids == ["0", "1", "2", "3", "4", "5"]
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_array_equal(result.predictions, predicted)
    assert result.labels.dtype == np.int64 and result.predictions.dtype == np.int64
    np.testing.assert_array_equal(result.correct, [True, True, False, True, True, False])
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.balanced_accuracy == pytest.approx((2 / 3 + 1 / 1 + 1 / 2) / 3)  # classes 0, 1, 2 only
    right = -math.log(math.exp(2) / (math.exp(2) + 3))
    wrong = -math.log(1 / (math.exp(2) + 3))
    assert result.loss == pytest.approx((4 * right + 2 * wrong) / 6, rel=1e-6)
    assert result.num_samples == 6
    assert model.training  # previous mode restored


def test_evaluate_rejects_an_empty_split_wrong_width_and_out_of_range_labels():
    with pytest.raises(ValueError, match="empty split"):
        evaluate(FixedLogits(), loader_over([]), device=CPU, num_classes=3)
    samples = [{"image": torch.zeros(1, 3), "label": torch.tensor(0), "id": "a"}]
    with pytest.raises(ValueError, match=r"expected \(B, 4\)"):
        evaluate(FixedLogits(), loader_over(samples), device=CPU, num_classes=4)
    samples = [{"image": torch.zeros(1, 3), "label": torch.tensor(3), "id": "a"}]
    with pytest.raises(ValueError, match="out of range"):
        evaluate(FixedLogits(), loader_over(samples), device=CPU, num_classes=3)


def test_round_learning_rate_decays_per_round():
    assert round_learning_rate(0.01, 0.99, 0) == pytest.approx(0.01)
    assert round_learning_rate(0.01, 0.99, 1) == pytest.approx(0.0099)
    assert round_learning_rate(0.01, 0.99, 100) == pytest.approx(0.01 * 0.99**100)
    assert round_learning_rate(0.1, 1.0, 50) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        round_learning_rate(0.01, 0.99, -1)


def test_make_optimizer_builds_sgd_and_adam_with_the_reference_settings():
    model = small_cnn()
    sgd = make_optimizer(model)
    group = sgd.param_groups[0]
    assert isinstance(sgd, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 1e-5)
    adam = make_optimizer(model, name="adam", lr=1e-3)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 1e-3
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'.*sgd, adam"):
        make_optimizer(model, name="rmsprop")


def test_select_device():
    assert select_device("cpu") == CPU
    assert select_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_monai_dataset_batches_with_metatensors_train_and_evaluate():
    from monai.data import DataLoader as MonaiDataLoader
    from monai.data import Dataset, MetaTensor
    from monai.transforms import Compose, EnsureTyped, ScaleIntensityd

    transform = Compose([EnsureTyped(keys="image"), ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0)])
    dataset = Dataset(separable_samples(12), transform=transform)
    loader = MonaiDataLoader(dataset, batch_size=4)
    assert isinstance(next(iter(loader))["image"], MetaTensor)
    model = small_cnn()
    result = train_local(model, loader, FedKPerStrategy(), epochs=2, optimizer=make_optimizer(model), device=CPU,
                         teacher=frozen_copy(model), cache_teacher_logits=True)
    assert result.teacher_forward_passes == 3 and result.num_samples == 12
    evaluation = evaluate(model, loader, device=CPU, num_classes=2)
    assert evaluation.ids == [f"case-{index:03d}" for index in range(12)]
    assert isinstance(evaluation.loss, float) and 0.0 <= evaluation.accuracy <= 1.0
