"""One federated site and its round, without FLARE.

:class:`Site` is everything a site does: it reads its datalist, builds its MONAI data and networks, and each
round evaluates the received global model on its local test split (with flips), trains (the received model
is the teacher or proximal anchor; Ditto also trains an upload copy), evaluates its personalized model
(with flips), measures its training accuracy and computes its FedKPer score. Its flip memories and its
personalized model live in ``state_dir`` so that a restarted site continues where it stopped
(:mod:`fedkper_monai.training.site_state`), and each round's randomness depends only on (seed, round, site).

The FLARE learner, the in-process benchmark loop and the tests all drive this same class::

    site = Site("site-1", "data/retina/site-1.json", SiteConfig(network=spec), state_dir="work/site-1")
    report = site.train_round(global_weights, round_index=0, version=0)
    report.upload, report.score, report.num_samples, report.metrics

What leaves the site is :class:`SiteReport`: weights, the score, the sample count and scalar metrics of
models on its own test split (docs/design.md, Rules the code keeps).
"""

from __future__ import annotations

import copy
import os
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedkper_monai.algorithm import FlipResult, fedkper_score
from fedkper_monai.algorithm.weighting import noisy_score
from fedkper_monai.errors import DataError
from fedkper_monai.training.loop import EvalResult, evaluate, make_optimizer, round_learning_rate, select_device, train_local
from fedkper_monai.training.networks import build_network, check_network_matches
from fedkper_monai.training.site_config import SiteConfig
from fedkper_monai.training.site_selection import SiteSelection, split_validation
from fedkper_monai.training.site_state import CHECKPOINT_FILE, ROUND_START_FILE, STATE_FILE, SiteState, round_seed
from fedkper_monai.training.strategies import FedAvgStrategy, LocalStrategy, make_strategy
from fedkper_monai.training.tasks import make_task

__all__ = ["SiteConfig", "SiteReport", "Site", "STATE_FILE", "CHECKPOINT_FILE"]


@dataclass
class SiteReport:
    """What one train round sends to the server.

    Attributes:
        upload: the weights to aggregate (the trained model; Ditto's separately trained global update).
        score: the FedKPer score (reliability x label diversity).
        num_samples: training samples.
        metrics: scalars only: the received model's global-on-local figures, the personalized model's
            figures, the training time and, when the site shares diagnostics, its training accuracy, loss,
            learning rate and strategy diagnostics (``strategy_<name>``).
        diagnostics: those diagnostics, always (for the site's own log).
    """

    upload: dict[str, torch.Tensor]
    score: float
    num_samples: int
    metrics: dict[str, float | int]
    diagnostics: dict[str, float] = field(default_factory=dict)


class Site:
    """One site: its data, models, local objective and flip memories (see the module docstring).

    Args:
        name: the site's name (logs and errors).
        datalist: the site's datalist JSON (``training`` and ``test`` lists).
        config: local settings.
        state_dir: where the flip memories and the personalized model are kept; ``None`` keeps nothing.

    Raises:
        DataError: the datalist is missing, malformed or has an empty training or test list.
        FedKPerError: the network does not fit the datalist's classes, or a setting is invalid.
    """

    def __init__(self, name: str, datalist: str | os.PathLike, config: SiteConfig, state_dir: str | os.PathLike | None = None) -> None:
        from fedkper_monai.data import load_datalist

        self.name = name
        self.config = config
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.store = SiteState(self.state_dir)
        self.task = make_task(config.task, **config.task_args)
        # The validation part (opt-in) leaves the training list before anything is counted or loaded.
        data, validation = split_validation(load_datalist(datalist), config.val_fraction, config.seed, name)
        if data.task != self.task.name:
            raise DataError(data.path, f"declares task {data.task!r} but the job trains {self.task.name!r}", field="task")
        for split in ("training", "test"):
            if not getattr(data, split):
                raise DataError(data.path, f"site {name} has no {'local test' if split == 'test' else split} samples", field=split)
        check_network_matches(config.network, data.num_classes, data.path)
        self.datalist_path = data.path
        self.num_classes = data.num_classes
        self.class_counts = self.task.label_histogram(data.training, data.num_classes)
        self.num_train = len(data.training)
        self.local_test_size = len(data.test)
        self.device = select_device(config.device)
        torch.manual_seed(config.seed)
        self.model = build_network(**config.network).to(self.device)
        self._build_loaders(data, validation, drop_last=self._drop_last_single(data.path))
        # The received global model, frozen each round: teacher (FedKPer, FedNTD) or anchor (FedProx, Ditto).
        self.global_model = copy.deepcopy(self.model)
        self.strategy: LocalStrategy = make_strategy(config.algorithm, **config.algorithm_args)
        self.strategy.set_supervised(self.task.supervised_criterion())
        # Ditto uploads a separately trained copy of the received model; the others upload self.model.
        self.upload_model = copy.deepcopy(self.model) if self.strategy.personal_model else None
        self.has_own_model = False
        self.trackers = {role: self.task.flip_tracker(self.num_classes) for role in ("personalized", "global_on_local")}
        self._global_eval: dict[str, Any] = {}
        # The state the round in progress started from (version, personalized flips, own model or not).
        self._round_start: dict[str, Any] = {}
        self.restored = False
        # torch imports its compiler stack (~800 modules, ~0.8 s) when a process builds its first optimizer;
        # pay that at setup rather than inside this site's first round (and its train_seconds).
        self._optimizer(self.model, config.lr)
        self._load_state()

    def _drop_last_single(self, path: str) -> bool:
        """Whether training drops a last batch of one sample (only with batch normalization).

        A batch of one reaches a BatchNorm layer as one value per channel wherever the network pools to 1x1
        (MONAI's 3D ResNets at 16^3, DenseNets at 32^3), and PyTorch then refuses it in the middle of a round.
        The loader shuffles each epoch, so the sample left out differs from epoch to epoch.
        """
        batch_norm = any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in self.model.modules())
        if not batch_norm or self.num_train % self.config.batch_size != 1:
            return False
        if self.num_train == 1:
            raise DataError(path, f"site {self.name} has 1 training sample; network {self.config.network.get('name')!r} "
                                  "uses batch normalization, which cannot train on a batch of one", field="training")
        return True

    def _build_loaders(self, data: Any, validation: list[dict], drop_last: bool = False) -> None:
        from fedkper_monai.data import build_transforms, is_deterministic, make_dataset, make_loader

        config = self.config
        image_size = config.network.get("image_size")
        settings = {**({"channels": data.channels} if data.channels else {}), **config.transform_settings}
        train_transform = build_transforms(config.transforms, image_size=image_size, augment=config.augment, overrides=settings)
        eval_transform = build_transforms(config.transforms, image_size=image_size, augment=False, overrides=settings)
        # Teacher logits can be computed once per round only when the same sample always looks the same.
        self.cache_teacher_logits = is_deterministic(train_transform)
        eval_batch = max(config.batch_size, 64)
        train_set = make_dataset(data.training, train_transform, cache=config.cache)
        self.train_loader = make_loader(train_set, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                                        num_workers=config.num_workers, drop_last=drop_last)
        # The score's training accuracy: the training split with the evaluation transforms, in order.
        train_eval_set = train_set if not config.augment else make_dataset(data.training, eval_transform, cache=config.cache)
        self.train_eval_loader = make_loader(train_eval_set, batch_size=eval_batch, shuffle=False, num_workers=config.num_workers)
        test_set = make_dataset(data.test, eval_transform, cache=config.cache)
        self.test_loader = make_loader(test_set, batch_size=eval_batch, shuffle=False, num_workers=config.num_workers)
        val_loader = make_loader(make_dataset(validation, eval_transform, cache=config.cache), batch_size=eval_batch,
                                 shuffle=False, num_workers=config.num_workers) if validation else None
        self.selection = SiteSelection(val_loader, len(validation))

    # ------------------------------------------------------------------ the round
    def evaluate_global(self, weights: Mapping[str, torch.Tensor], version: Any, initial: bool = False,
                        save: bool = True) -> dict[str, float | int]:
        """The received global model on the local test split, with its flips; once per model ``version``.

        FLARE validates before each train task and the train task needs the same figures: a version already
        evaluated returns the stored metrics (also across a restart), so no model is counted twice in the flips.
        ``initial``: the never-trained initial model, which is no previous evaluation for the flips (docs/design.md,
        Forgetting: NFR and BwT): it is scored but not remembered. ``save``: write the state now (a train round writes it
        once, when the round starts).
        """
        version = _version_key(version)
        if self._global_eval.get("version") == version:
            return dict(self._global_eval["metrics"])
        self.global_model.load_state_dict(weights)
        result = self._evaluate(self.global_model, self.test_loader)
        tracker = self.task.flip_tracker(self.num_classes) if initial else self.trackers["global_on_local"]
        flips = tracker.update(result.ids, result.correct, result.labels)
        metric = self.task.metric
        metrics = {
            f"global_on_local_{metric}": result.accuracy,
            f"global_on_local_balanced_{metric}": result.balanced_accuracy,
            "local_test_size": self.local_test_size,
            **_flip_fields("global_on_local", flips, initial),
        }
        self._global_eval = {"version": version, "metrics": metrics}
        if save:
            self._save_state(save_model=False)
        return dict(metrics)

    def train_round(
        self,
        weights: Mapping[str, torch.Tensor],
        round_index: int,
        version: Any,
        is_aborted: Callable[[], bool] = lambda: False,
        initial: bool = False,
    ) -> SiteReport | None:
        """One round: evaluate the received model, train, evaluate the personalized model, score.

        Args:
            weights: the received global model's state dict.
            round_index: the FL round (sets the decayed learning rate).
            version: identity of the received model (see :meth:`evaluate_global`).
            is_aborted: polled after training; when it returns True the round stops and returns ``None``.
            initial: the received model is the never-trained initial one (see :meth:`evaluate_global`).
        """
        # The evaluation is written with the round's start state in _begin_round: one state write, not two.
        metrics: dict[str, float | int] = self.evaluate_global(weights, version, initial=initial, save=False)
        self.global_model.load_state_dict(weights)
        self.global_model.eval()
        self.global_model.requires_grad_(False)
        # Local-only and Ditto keep their own model across rounds; everyone starts from the global initialization.
        keeps_own_model = not self.strategy.federated or self.strategy.personal_model
        self._begin_round(version, keeps_own_model)
        self._seed_round(round_index)
        if not keeps_own_model or not self.has_own_model:
            self.model.load_state_dict(weights)
        lr = round_learning_rate(self.config.lr, self.config.lr_gamma, round_index)
        started = time.perf_counter()
        if self.upload_model is not None:
            # Ditto: the global update is the received model trained with plain cross-entropy.
            self.upload_model.load_state_dict(weights)
            plain = FedAvgStrategy()
            plain.set_supervised(self.task.supervised_criterion())
            self._fit(self.upload_model, plain, lr)
        trained = self._fit(self.model, self.strategy, lr)
        self.has_own_model = True
        train_seconds = time.perf_counter() - started
        if is_aborted():
            return None
        metrics.update({**self._personalized_metrics(), "validation_size": self.selection.size})
        self.selection.consider(round_index, self.model, self._evaluate, self.store)  # before the state names it
        on_training = self._evaluate(self.model, self.train_eval_loader).accuracy
        # The histogram's length is the number of classes the diversity is over (C - 1 for segmentation).
        exact_score = fedkper_score(self.task.reliability(on_training), self.class_counts, len(self.class_counts))
        score = self._sent_score(exact_score, round_index)
        self._save_state(save_model=True)
        upload = (self.upload_model if self.upload_model is not None else self.model).state_dict()
        metrics.update({"score": score, "num_samples": self.num_train, "train_seconds": train_seconds})
        diagnostics = {
            f"train_{self.task.metric}": on_training,
            "train_loss": trained.mean_loss,
            "lr": lr,
            **{f"strategy_{key}": value for key, value in trained.stats.items()},
        }
        if self.config.share_diagnostics:
            metrics.update(diagnostics)
        return SiteReport(upload=upload, score=float(score), num_samples=int(self.num_train), metrics=metrics, diagnostics=diagnostics)

    def _begin_round(self, version: Any, keeps_own_model: bool) -> None:
        """Remember the state this round starts from; or, when this model was already being trained (a
        server that restarted sends its round again), go back to that state and train the round once."""
        if not self.store.kept:
            return
        version = _version_key(version)
        start = self._round_start
        if start.get("version") == version:
            self.trackers["personalized"].load_state_dict(start["personalized"])
            self.has_own_model = bool(start["has_own_model"])
            own = self.store.read_model(ROUND_START_FILE, self.device) if start.get("model_saved") else None
            if own is not None:
                self.model.load_state_dict(own)
            self._save_state(save_model=False)
            return
        saved = keeps_own_model and self.has_own_model
        if saved:
            self.store.write_model(ROUND_START_FILE, self.model.state_dict())
        self._round_start = {
            "version": version,
            "personalized": self.trackers["personalized"].state_dict(),
            "has_own_model": self.has_own_model,
            "model_saved": saved,
        }
        self._save_state(save_model=False)

    def _seed_round(self, round_index: int) -> None:
        """Seed this round's shuffling, random transforms and dropout from (seed, round, site) alone."""
        from monai.data.utils import set_rnd

        seed = round_seed(self.config.seed, round_index, self.name)
        torch.manual_seed(seed)
        if self.train_loader.generator is not None:
            self.train_loader.generator.manual_seed(seed)
        set_rnd(self.train_loader.dataset, seed % (2**32))

    def _sent_score(self, score: float, round_index: int) -> float:
        """The score as it leaves the site: exact, or with calibrated noise (``score_epsilon``), seeded per round."""
        if self.config.score_epsilon is None:
            return score
        rng = np.random.default_rng([self.config.seed, round_index, zlib.crc32(self.name.encode())])
        return noisy_score(score, self.config.score_epsilon, rng)

    def _personalized_metrics(self) -> dict[str, float]:
        """The trained local model on the local test split, with its flips."""
        metric = self.task.metric
        personalized = self._evaluate(self.model, self.test_loader)
        flips = self.trackers["personalized"].update(personalized.ids, personalized.correct, personalized.labels)
        return {
            f"personalized_{metric}": personalized.accuracy,
            f"personalized_balanced_{metric}": personalized.balanced_accuracy,
            **_flip_fields("personalized", flips),
        }

    def _evaluate(self, network: torch.nn.Module, loader: Any) -> EvalResult:
        return evaluate(network, loader, device=self.device, num_classes=self.num_classes, amp=self.config.amp, task=self.task)

    def _optimizer(self, network: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        config = self.config
        return make_optimizer(network, name=config.optimizer, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)

    def _fit(self, network: torch.nn.Module, strategy: LocalStrategy, lr: float) -> Any:
        """One round of local training of ``network`` with ``strategy`` (the shared loop)."""
        return train_local(
            network,
            self.train_loader,
            strategy,
            epochs=self.config.local_epochs,
            optimizer=self._optimizer(network, lr),
            device=self.device,
            teacher=self.global_model if strategy.needs_global_model else None,
            cache_teacher_logits=self.cache_teacher_logits,
            amp=self.config.amp,
            task=self.task,
        )

    # ------------------------------------------------------------------ state on disk
    def _load_state(self) -> None:
        """Restore flip memories, the last global evaluation and the personalized model (a restarted site)."""
        state = self.store.read()
        if state is not None:
            for role, tracker in self.trackers.items():
                tracker.load_state_dict(state["trackers"][role])
            cache = state.get("global_eval") or {}
            if cache:
                self._global_eval = {"version": _version_key(cache["version"]), "metrics": cache["metrics"]}
            self._round_start = dict(state.get("round_start") or {})
            self.selection.best.load_state_dict(state.get("selection"))
            self.restored = True
        own = self.store.read_model(CHECKPOINT_FILE, self.device)
        if own is not None:
            self.model.load_state_dict(own)
            self.has_own_model = True

    def adopt_state(self, previous: str | os.PathLike) -> bool:
        """Continue from the state a stopped job left in ``previous`` (a resumed run); True when adopted."""
        if not self.store.adopt(previous):
            return False
        self._load_state()
        return True

    def _save_state(self, save_model: bool) -> None:
        if not self.store.kept:
            return
        if save_model:
            self.store.write_model(CHECKPOINT_FILE, self.model.state_dict())
        self.store.write({
            "trackers": {role: tracker.state_dict() for role, tracker in self.trackers.items()},
            "global_eval": self._global_eval,
            "round_start": self._round_start,
            "selection": self.selection.best.state_dict(),
        })

    def describe(self) -> str:
        """One line for the site's log."""
        return (
            f"{self.name}: {self.num_train} training / {self.local_test_size} local test samples from "
            f"{self.datalist_path}; class counts {self.class_counts}; algorithm {self.config.algorithm}; "
            f"device {self.device}"
        )


def _flip_fields(role: str, flips: FlipResult, initial: bool = False) -> dict[str, float | int]:
    """A role's flip figures as a site sends them (no per-class figures: they would reveal the label mix)."""
    return {
        f"nfr_{role}": flips.nfr,
        f"negative_flips_{role}": flips.negative_flips,
        # Nothing flips from a model that was never a previous evaluation.
        f"positive_flips_{role}": 0 if initial else flips.positive_flips,
        f"unchanged_{role}": flips.num_evaluated if initial else flips.unchanged,
    }


def _version_key(version: Any) -> Any:
    """A global-model version as stored in the JSON state (lists there, tuples nowhere)."""
    return list(version) if isinstance(version, (list, tuple)) else version
