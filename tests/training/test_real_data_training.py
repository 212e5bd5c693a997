"""The reference CNN learns real images (brain tumor MRI, 28x28, 4 classes) through the shared loop."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedkper_monai.training import (
    FedKPerStrategy,
    build_network,
    evaluate,
    frozen_copy,
    make_optimizer,
    select_device,
    train_local,
)


def test_fedkper_local_training_learns_real_mri_classes(brain_tumor_28_npz):
    arrays = np.load(brain_tumor_28_npz)
    all_labels = arrays["train_labels"][:, 0]
    num_classes = int(all_labels.max()) + 1
    # The file is sorted by class: take the first 24 of every class.
    chosen = np.concatenate([np.flatnonzero(all_labels == cls)[:24] for cls in range(num_classes)])
    count = len(chosen)
    images = arrays["train_images"][chosen].astype(np.float32) / 127.5 - 1.0  # [-1, 1], see docs/design.md, The reference setting lessons
    labels = arrays["train_labels"][chosen].astype(np.int64)  # (N, 1), as MedMNIST stores them
    samples = [
        {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label), "id": f"train-{index}"}
        for index, (image, label) in enumerate(zip(images, labels))
    ]
    torch.manual_seed(0)
    model = build_network("reference_cnn", spatial_dims=2, in_channels=1, num_classes=num_classes)
    teacher = frozen_copy(model)
    device = select_device("cpu")
    train_loader = DataLoader(samples, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(0))
    eval_loader = DataLoader(samples, batch_size=32)

    before = evaluate(model, eval_loader, device=device, num_classes=num_classes)
    result = train_local(model, train_loader, FedKPerStrategy(), epochs=10, optimizer=make_optimizer(model, lr=0.03),
                         device=device, teacher=teacher, cache_teacher_logits=True)
    after = evaluate(model, eval_loader, device=device, num_classes=num_classes)

    assert result.teacher_forward_passes == count // 12
    assert after.loss < before.loss
    assert after.balanced_accuracy > max(before.balanced_accuracy, 0.5)  # chance level is 0.25
    assert 0.0 < result.stats["beta"] <= 10.0
