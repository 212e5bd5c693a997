"""The one local training loop shared by every strategy, and evaluation.

Batches are dicts as produced by ``fedkper_monai.data.make_loader`` (and MONAI datasets in general):
``"image"`` float ``(B, C, *spatial)``, ``"label"`` int ``(B,)`` or ``(B, 1)`` (a segmentation task: label maps
``(B, 1, *spatial)``), ``"id"`` list of ``B`` strings.

The FedKPer site score needs the trained local model's accuracy on its own training split: that is
``evaluate(model, train_eval_loader, ...).accuracy``, with a loader over the training split that uses the
evaluation (deterministic) transforms and no shuffling. There is no separate training-accuracy function.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkper_monai.training.strategies import LocalStrategy
from fedkper_monai.training.task_base import Task
from fedkper_monai.training.tasks import ClassificationTask
from fedkper_monai.training.teacher_logits import TeacherLogits, batch_ids

__all__ = [
    "select_device",
    "make_optimizer",
    "round_learning_rate",
    "frozen_copy",
    "TrainResult",
    "train_local",
    "EvalResult",
    "evaluate",
]

OPTIMIZER_NAMES: tuple[str, ...] = ("sgd", "adam")


def select_device(preference: str = "auto") -> torch.device:
    """The device to train on.

    Args:
        preference: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.

    Raises:
        ValueError: CUDA was asked for but is not available, or the preference is not a device name.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as error:
        raise ValueError(f"unknown device {preference!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} requested but CUDA is not available on this machine")
    return device


def make_optimizer(
    model: nn.Module,
    *,
    name: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-5,
) -> torch.optim.Optimizer:
    """A fresh optimizer over ``model``'s parameters (sites build one per round, as in the reference).

    Args:
        name: ``"sgd"`` (with ``momentum``) or ``"adam"`` (``momentum`` unused).
        lr: learning rate; use :func:`round_learning_rate` for the per-round decay.
        weight_decay: L2 penalty.

    Raises:
        ValueError: unknown name or a negative / zero learning rate.
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZER_NAMES)}")


def round_learning_rate(base_lr: float, gamma: float, round_index: int) -> float:
    """Learning rate of round ``round_index`` (0-based) under a per-round StepLR: ``base_lr * gamma**round_index``.

    Example:
        >>> round_learning_rate(0.01, 0.99, 2)
        0.009801
    """
    if round_index < 0:
        raise ValueError(f"round_index must be >= 0, got {round_index}")
    if base_lr <= 0 or gamma <= 0:
        raise ValueError(f"base_lr and gamma must be > 0, got base_lr={base_lr}, gamma={gamma}")
    return float(base_lr * gamma**round_index)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off: the teacher / global reference of a round."""
    copied = copy.deepcopy(model)
    copied.eval()
    copied.requires_grad_(False)
    return copied


@dataclass(frozen=True)
class TrainResult:
    """Summary of one :func:`train_local` call.

    Attributes:
        epochs: local epochs run.
        steps: optimizer steps (batches over all epochs).
        num_samples: training samples seen per epoch.
        mean_loss: sample-weighted mean of the strategy's loss over all epochs.
        seconds: wall time of the call.
        teacher_forward_passes: teacher batch forward passes (with caching: one epoch's worth).
        stats: the strategy's diagnostics (``strategy.stats()``), e.g. ``beta``, ``kl``, ``ce`` for FedKPer.
    """

    epochs: int
    steps: int
    num_samples: int
    mean_loss: float
    seconds: float
    teacher_forward_passes: int
    stats: dict[str, float] = field(default_factory=dict)


def train_local(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    strategy: LocalStrategy,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    teacher: nn.Module | None = None,
    cache_teacher_logits: bool = False,
    amp: bool = False,
    max_grad_norm: float | None = None,
    task: Task | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` epochs with ``strategy``'s local objective.

    Args:
        model: the model to train (holding the received global weights); moved to ``device``, left in
            train mode.
        loader: batches of dicts (see the module docstring).
        strategy: the local objective; its :meth:`~LocalStrategy.begin_round` is called here.
        epochs: number of local epochs, >= 1.
        optimizer: built over ``model``'s parameters (:func:`make_optimizer`).
        device: where to train (:func:`select_device`).
        teacher: frozen copy of the received global model (:func:`frozen_copy`); required when
            ``strategy.needs_global_model``; its logits feed the loss when ``strategy.uses_teacher``.
        cache_teacher_logits: compute each sample's teacher logits once (keyed by the batch ``"id"``) and
            reuse them in later epochs. Only valid when the training transforms are deterministic (no random
            augmentation); the ids must be unique.
        amp: mixed precision (float16 autocast + gradient scaling) on CUDA; ignored on CPU (plain fp32).
        max_grad_norm: clip the gradient norm to this value when given.
        task: the label format of the batches (:mod:`fedkper_monai.training.tasks`); classification by default.

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: ``epochs < 1``, an empty loader, a missing teacher, or (with caching) missing or
            repeated sample ids.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if strategy.needs_global_model and teacher is None:
        raise ValueError(f"strategy {strategy.name!r} needs the frozen global model: pass teacher=frozen_copy(model)")
    use_amp = amp and device.type == "cuda"
    task = task or ClassificationTask()
    model.to(device)
    if teacher is not None:
        teacher.to(device)
        teacher.eval()
    strategy.begin_round(model, teacher)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    teacher_logits = TeacherLogits(teacher if strategy.uses_teacher else None, cache=cache_teacher_logits, use_amp=use_amp)

    start = time.perf_counter()
    model.train()
    steps = samples_per_epoch = 0
    loss_sum = 0.0
    loss_count = 0
    for epoch in range(epochs):
        epoch_samples = 0
        for batch in loader:
            images, targets = _batch_tensors(batch, device, task)
            loss = _step(model, images, targets, teacher_logits(batch, images, epoch), strategy, optimizer, scaler,
                         use_amp=use_amp, max_grad_norm=max_grad_norm)
            steps += 1
            epoch_samples += len(targets)
            loss_sum += loss * len(targets)
            loss_count += len(targets)
        if epoch_samples == 0:
            raise ValueError("train_local: the loader yielded no samples (empty training split)")
        samples_per_epoch = epoch_samples

    return TrainResult(
        epochs=epochs,
        steps=steps,
        num_samples=samples_per_epoch,
        mean_loss=loss_sum / loss_count,
        seconds=time.perf_counter() - start,
        teacher_forward_passes=teacher_logits.forward_passes,
        stats=strategy.stats(),
    )


@dataclass(frozen=True)
class EvalResult:
    """Per-sample predictions and summary metrics of one :func:`evaluate` call.

    Attributes:
        ids: sample ids in loader order.
        labels: true classes, int64 ``(num_samples,)``.
        predictions: arg-max classes, int64 ``(num_samples,)``.
        loss: mean cross-entropy.
        accuracy: share of correct predictions.
        balanced_accuracy: mean per-class recall over the classes present in ``labels``.
        num_samples: number of samples evaluated.
        task: the task that judged the predictions (decides what :attr:`correct` compares).
    """

    ids: list[str]
    labels: np.ndarray
    predictions: np.ndarray
    loss: float
    accuracy: float
    balanced_accuracy: float
    num_samples: int
    task: Task = field(default_factory=ClassificationTask, repr=False, compare=False)

    @property
    def correct(self) -> np.ndarray:
        """Boolean per counted unit (per sample for classification): what the flip trackers compare."""
        return self.task.correct(self.labels, self.predictions)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    *,
    device: torch.device,
    num_classes: int,
    amp: bool = False,
    task: Task | None = None,
) -> EvalResult:
    """Evaluate ``model`` on every batch of ``loader`` (eval mode, no gradients; the previous mode is restored).

    Use it for every accuracy the pipeline reports, including the FedKPer score's training accuracy (a loader
    over the training split with evaluation transforms).

    Args:
        model: a classifier producing logits ``(B, num_classes)``.
        loader: batches of dicts (see the module docstring). Without ``"id"`` keys, ids are the running
            positions ``"0", "1", ...``, stable only for an unshuffled loader.
        device: where to run.
        num_classes: the task's number of classes; logits and labels are checked against it.
        amp: float16 autocast on CUDA; ignored on CPU.
        task: label format, predictions, correctness and summary metrics (classification by default).

    Raises:
        ValueError: the loader yields no samples (empty split: the caller decides what that means), the
            logits have the wrong width, or a label is outside ``[0, num_classes)``.
    """
    use_amp = amp and device.type == "cuda"
    task = task or ClassificationTask()
    was_training = model.training
    model.to(device)
    model.eval()
    ids: list[str] = []
    labels: list[torch.Tensor] = []
    predictions: list[torch.Tensor] = []
    loss_sum = 0.0
    try:
        for batch in loader:
            images, targets = _batch_tensors(batch, device, task)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                # The task decides how a case is run: whole, or patch by patch (segmentation's sliding window).
                logits = task.infer(model, images)
            logits = logits.float()
            task.check_outputs(logits, targets, num_classes)
            # Per sample (a dense case: its voxel mean), summed over the batch.
            per_unit = F.cross_entropy(logits, targets, reduction="none")
            loss_sum += per_unit.reshape(per_unit.shape[0], -1).mean(dim=1).sum().item()
            ids.extend(batch_ids(batch, len(targets), start=len(ids)))
            labels.append(targets.cpu())
            predictions.append(task.predictions(logits).cpu())
    finally:
        model.train(was_training)
    if not ids:
        raise ValueError("evaluate: the loader yielded no samples (empty split)")

    label_array = torch.cat(labels).numpy().astype(np.int64)
    prediction_array = torch.cat(predictions).numpy().astype(np.int64)
    accuracy, balanced_accuracy = task.summary(label_array, prediction_array)
    return EvalResult(
        ids=ids,
        labels=label_array,
        predictions=prediction_array,
        loss=loss_sum / len(ids),
        accuracy=accuracy,
        balanced_accuracy=balanced_accuracy,
        task=task,
        num_samples=len(ids),
    )


def _step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    strategy: LocalStrategy,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    use_amp: bool,
    max_grad_norm: float | None,
) -> float:
    """One optimizer step on one batch; returns the batch's mean loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=images.device.type, dtype=torch.float16, enabled=use_amp):
        logits = model(images)
    # The objectives are computed in fp32: softmax/KL in fp16 loses the small teacher probabilities.
    loss = strategy.loss(logits.float(), targets, teacher_logits, model)
    scaler.scale(loss).backward()
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def _batch_tensors(batch: Mapping[str, Any], device: torch.device, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, targets)`` on ``device``: plain tensors (no MONAI metadata), targets as ``task`` takes them."""
    if "image" not in batch or "label" not in batch:
        raise ValueError(f"a batch must hold 'image' and 'label' keys, got {sorted(batch)}")
    images = batch["image"]
    targets = batch["label"]
    # MetaTensor carries per-sample metadata through every op; the loop needs none of it.
    images = images.as_tensor() if hasattr(images, "as_tensor") else torch.as_tensor(images)
    targets = targets.as_tensor() if hasattr(targets, "as_tensor") else torch.as_tensor(targets)
    targets = task.targets(targets, images.shape[0])
    non_blocking = device.type == "cuda"
    return images.to(device, non_blocking=non_blocking).float(), targets.to(device, non_blocking=non_blocking)
