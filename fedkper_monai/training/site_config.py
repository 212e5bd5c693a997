"""A site's local settings (:class:`SiteConfig`), with the paper's defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from fedkper_monai.errors import DataError
from fedkper_monai.job_fields import check_site_settings

__all__ = ["SiteConfig", "check_val_fraction"]


@dataclass(frozen=True)
class SiteConfig:
    """A site's local settings; the defaults are the paper's (docs/design.md, The reference setting).

    Args:
        network: ``build_network`` arguments (name, spatial_dims, in_channels, num_classes, image_size).
        algorithm: local objective, a :func:`~fedkper_monai.training.make_strategy` name.
        algorithm_args: the strategy's parameters (e.g. ``{"mu": 0.01}`` for FedProx).
        task: a :func:`~fedkper_monai.training.tasks.make_task` name; the datalist must declare the same.
        task_args: the task's options, e.g. ``{"supervised_loss": "dice_ce"}`` for segmentation.
        transforms: transform config name (``transforms/`` or the site's ``$FEDKPER_TRANSFORMS_DIR``).
        transform_settings: plain top-level settings that config declares, e.g. ``{"intensity_range": "per_image"}``
            (the datalist's ``channels``, when it has one, applies first); any other key is refused.
        augment: switch on the config's random augmentation for training.
        batch_size, local_epochs, optimizer, lr, momentum, weight_decay: local training.
        lr_gamma: learning-rate decay per round (StepLR over rounds).
        cache: dataset caching, ``none``, ``memory`` or ``disk``.
        num_workers: data loader worker processes.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        amp: mixed precision on CUDA.
        seed: seed of this site's shuffling and initialization.
        share_diagnostics: also send ``train_acc``, ``train_loss``, ``lr`` and the strategy's loss terms. Off by
            default: ``train_acc`` beside ``score`` gives away the exact normalized label entropy (docs/design.md,
            What leaves a site), so these stay in the site's own log unless its operator opts in.
        score_epsilon: when set, the score is sent with Laplace noise for ``score_epsilon``-differential
            privacy of the value (:func:`~fedkper_monai.algorithm.weighting.noisy_score`). The exact score
            reveals the site's normalized label entropy; this bounds what the sent one reveals.
        val_fraction: share of the training list kept aside (seeded per site, not trained on) to select the best
            personalized model, ``best_personalized_model.pt`` (:mod:`fedkper_monai.training.site_selection`).
            0 (default): no carve, so training and every metric stay as without selection; a site whose own
            datalist has a ``"validation"`` list selects on that list instead and carves nothing.
    """

    network: Mapping[str, Any] = field(default_factory=dict)
    algorithm: str = "fedkper"
    algorithm_args: Mapping[str, float] = field(default_factory=dict)
    task: str = "classification"
    task_args: Mapping[str, Any] = field(default_factory=dict)
    transforms: str = "classification_2d"
    transform_settings: Mapping[str, Any] = field(default_factory=dict)
    augment: bool = False
    batch_size: int = 12
    local_epochs: int = 5
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-5
    lr_gamma: float = 0.99
    cache: str = "memory"
    num_workers: int = 0
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    share_diagnostics: bool = False
    score_epsilon: float | None = None
    val_fraction: float = 0.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str | os.PathLike = "site settings") -> SiteConfig:
        """Build from a job's learner arguments, checked as untrusted input (:mod:`fedkper_monai.job_fields`).

        Every key must be a field; every value plain data; ``network``, ``algorithm_args``, ``task_args`` and
        ``transform_settings`` may hold only what the network, the strategy, the task and the transform config
        declare. ``source`` (the job file, or "site executor args" at a site) starts each error.

        Raises:
            DataError: naming ``source`` and the field (an unknown key: with the valid ones).
        """
        valid = [f for f in cls.__dataclass_fields__]
        unknown = sorted(str(key) for key in set(values) - set(valid))
        if unknown:
            raise DataError(source, f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(valid)}")
        config = cls(**values)
        check_val_fraction(config.val_fraction, source)
        check_site_settings(values, algorithm=config.algorithm, task=config.task, transforms=config.transforms, source=source)
        return config


def check_val_fraction(value: Any, source: str | os.PathLike) -> None:
    """``val_fraction`` must be a number in [0, 1) (0: no carve); here, standard library only, so the launchers
    check a job without loading torch."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise DataError(source, f"must be a number in [0, 1) (the share of the training list kept to select the best "
                                f"personalized model; 0: none), got {value!r}", field="val_fraction")
