"""The FLARE site: a ``ModelLearner`` that runs one local objective on this site's MONAI data.

It translates FLARE's ``FLModel`` into calls of :mod:`fedkper_monai.training` and
:mod:`fedkper_monai.algorithm`; the math lives there.
"""

from __future__ import annotations

import copy
import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model_learner import ModelLearner
from nvflare.app_common.executors.model_learner_executor import ModelLearnerExecutor

from fedkper_monai.algorithm import FlipTracker, fedkper_score
from fedkper_monai.errors import DataError
from fedkper_monai.flare.sitedata import check_network_matches, site_datalist_path
from fedkper_monai.flare.weights import payload_bytes, to_numpy, to_torch
from fedkper_monai.io import atomic_write_bytes, atomic_write_json

__all__ = ["FedKPerLearner", "GLOBAL_VERSION_KEY", "SITE_METRICS_KEY"]

# Meta key set by the controller: how many aggregations produced the model in this task.
GLOBAL_VERSION_KEY = "global_version"
# Meta key of a train result's metrics. FLModel.metrics of a result that also carries weights is
# overwritten by FLARE's ModelLearnerExecutor with its pre-train validation metrics, so ours travel here.
SITE_METRICS_KEY = "site_metrics"
STATE_FILE = "fedkper_site_state.json"
CHECKPOINT_FILE = "personalized_model.pt"


def _version_key(version: Any) -> Any:
    """A global-model version as stored in the JSON state (lists there, tuples nowhere)."""
    return list(version) if isinstance(version, (list, tuple)) else version


class FedKPerLearner(ModelLearner):
    """One FL site: evaluates the global model, trains the personalized model, reports score and metrics.

    Args:
        data_root: folder holding ``<site-name>.json``; default ``$FEDKPER_DATA_ROOT``, or the file
            ``$FEDKPER_DATALIST`` (see :func:`fedkper_monai.flare.sitedata.site_datalist_path`).
        demo: use the built-in demo data when no data root is configured.
        algorithm: local objective: ``fedkper``, ``fedavg``, ``fedprox``, ``fedntd``, ``ditto`` or ``local``
            (see :mod:`fedkper_monai.training.strategies`).
        algorithm_args: keyword arguments of the strategy (e.g. ``{"mu": 0.01}`` for FedProx).
        network: ``build_network`` arguments (name, spatial_dims, in_channels, num_classes, image_size).
        transforms: transform config name or path (``transforms/``), read with MONAI's ConfigParser.
        augment: switch on the config's random augmentation for training.
        batch_size, local_epochs, optimizer, lr, momentum, weight_decay: local training (DESIGN §1).
        lr_gamma: learning-rate decay per round (StepLR over rounds).
        cache: dataset caching, ``none``, ``memory`` or ``disk``.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        amp: mixed precision on CUDA.
        seed: seed of this site's shuffling and initialization.
        analytic_sender_id: id of a FLARE ``TBWriter`` component for TensorBoard scalars (optional).
    """

    def __init__(
        self,
        data_root: str | None = None,
        demo: bool = False,
        algorithm: str = "fedkper",
        algorithm_args: dict | None = None,
        network: dict | None = None,
        transforms: str = "classification_2d",
        augment: bool = False,
        batch_size: int = 12,
        local_epochs: int = 5,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-5,
        lr_gamma: float = 0.99,
        cache: str = "memory",
        num_workers: int = 0,
        device: str = "auto",
        amp: bool = True,
        seed: int = 0,
        analytic_sender_id: str = "log_writer",
    ) -> None:
        # FLARE 2.9 warns once per process that ModelLearner is deprecated in favour of its Client API (it
        # forces that warning past any filter); ModelLearner and its executor remain supported, and our jobs use them.
        super().__init__()
        self.data_root = data_root
        self.demo = demo
        self.algorithm = algorithm
        self.algorithm_args = dict(algorithm_args or {})
        self.network_spec = dict(network or {})
        self.transforms_name = transforms
        self.augment = augment
        self.batch_size = batch_size
        self.local_epochs = local_epochs
        self.optimizer_name = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.lr_gamma = lr_gamma
        self.cache = cache
        self.num_workers = num_workers
        self.device_preference = device
        self.amp = amp
        self.seed = seed
        self.analytic_sender_id = analytic_sender_id
        self._eval_cache: dict[str, Any] = {}
        self._initialized = False

    # ------------------------------------------------------------------ setup
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Set up when the job starts, not at this site's first task.

        FLARE's ``ModelLearnerExecutor`` initializes a learner lazily, at its first task; with 10% of the
        sites sampled per round that can be many rounds in, so a broken datalist would surface late and
        a site's cache building would stall the round that first needs it. At ``START_RUN`` we bind the
        learner to its site the way the executor does and initialize; the executor's later call is then a
        no-op. A failure here is logged by FLARE and raised again by the first task.
        """
        if event_type == EventType.START_RUN:
            ModelLearnerExecutor._setup_learner(self, None, fl_ctx, None)
            self.initialize()

    def initialize(self) -> None:
        if self._initialized:
            return
        from fedkper_monai.data import build_transforms, class_counts, is_deterministic, load_datalist, make_dataset, make_loader
        from fedkper_monai.training import build_network, make_optimizer, make_strategy, select_device

        datalist = load_datalist(site_datalist_path(self.site_name, self.data_root, demo=self.demo))
        if not datalist.training:
            raise DataError(datalist.path, f"site {self.site_name} has no training samples", field="training")
        if not datalist.test:
            raise DataError(datalist.path, f"site {self.site_name} has no local test samples", field="test")
        check_network_matches(self.network_spec, datalist.num_classes, datalist.path)
        self.num_classes = datalist.num_classes
        self.class_counts = class_counts(datalist.training, datalist.num_classes)
        self.device = select_device(self.device_preference)
        torch.manual_seed(self.seed)

        image_size = self.network_spec.get("image_size")
        train_transform = build_transforms(self.transforms_name, image_size=image_size, augment=self.augment)
        eval_transform = build_transforms(self.transforms_name, image_size=image_size, augment=False)
        # Teacher logits can be computed once per round only when the same sample always looks the same.
        self.cache_teacher_logits = is_deterministic(train_transform)
        train_set = make_dataset(datalist.training, train_transform, cache=self.cache)
        self.train_loader = make_loader(train_set, batch_size=self.batch_size, shuffle=True, seed=self.seed, num_workers=self.num_workers)
        train_eval_set = train_set if not self.augment else make_dataset(datalist.training, eval_transform, cache=self.cache)
        self.train_eval_loader = make_loader(train_eval_set, batch_size=max(self.batch_size, 64), shuffle=False, num_workers=self.num_workers)
        test_set = make_dataset(datalist.test, eval_transform, cache=self.cache)
        self.test_loader = make_loader(test_set, batch_size=max(self.batch_size, 64), shuffle=False, num_workers=self.num_workers)
        self.num_train = len(datalist.training)
        self.local_test_size = len(datalist.test)

        self.model = build_network(**self.network_spec).to(self.device)
        self.global_model = copy.deepcopy(self.model)
        self.strategy = make_strategy(self.algorithm, **self.algorithm_args)
        # Ditto uploads a separately trained copy of the global model; others upload self.model.
        self.upload_model = copy.deepcopy(self.model) if self.strategy.personal_model else None
        self._has_own_model = False
        self.trackers = {"personalized": FlipTracker(self.num_classes), "global_on_local": FlipTracker(self.num_classes)}
        # torch imports its compiler stack (~800 modules, ~0.8 s) when a process builds its first optimizer;
        # pay that here, at setup, rather than inside this site's first train task (and its train_seconds).
        make_optimizer(self.model, name=self.optimizer_name, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        self._load_state()
        self.writer = self.get_component(self.analytic_sender_id) if self.analytic_sender_id else None
        self._initialized = True
        self.info(
            f"{self.site_name}: {self.num_train} training / {self.local_test_size} local test samples from "
            f"{datalist.path}; class counts {self.class_counts}; algorithm {self.algorithm}; device {self.device}"
        )

    # ------------------------------------------------------------------ state on disk
    def _state_path(self) -> Path:
        return Path(self.job_root) / STATE_FILE

    def _load_state(self) -> None:
        """Restore flip memories (and the personalized model) so that a restarted site continues."""
        path = self._state_path()
        if path.exists():
            state = json.loads(path.read_text())
            for role, tracker in self.trackers.items():
                tracker.load_state_dict(state["trackers"][role])
            # A restarted site must not count the same global model twice in its flips.
            cache = state.get("global_eval") or {}
            if cache:
                self._eval_cache = {"version": _version_key(cache["version"]), "metrics": cache["metrics"]}
            self.info(f"restored flip memories from {path}")
        checkpoint = Path(self.job_root) / CHECKPOINT_FILE
        if checkpoint.exists():
            self.model.load_state_dict(torch.load(checkpoint, map_location=self.device, weights_only=True))
            self._has_own_model = True

    def _save_state(self, save_model: bool) -> None:
        if save_model:
            buffer = io.BytesIO()
            torch.save(self.model.state_dict(), buffer)
            atomic_write_bytes(Path(self.job_root) / CHECKPOINT_FILE, buffer.getvalue())
        state = {"trackers": {r: t.state_dict() for r, t in self.trackers.items()}, "global_eval": self._eval_cache}
        atomic_write_json(self._state_path(), state)

    # ------------------------------------------------------------------ tasks
    def _evaluate_global(self, model: FLModel) -> dict[str, Any]:
        """Global model on the local test split, with its flips; once per global model version."""
        from fedkper_monai.training import evaluate

        version = (model.meta or {}).get(GLOBAL_VERSION_KEY)
        if version is None:
            # Another controller: FLARE's pre-train validation and the train task of one round share it.
            version = ["round", model.current_round]
        version = _version_key(version)
        if self._eval_cache.get("version") == version:
            return self._eval_cache["metrics"]
        self.global_model.load_state_dict(to_torch(model.params))
        result = evaluate(self.global_model, self.test_loader, device=self.device, num_classes=self.num_classes, amp=self.amp)
        flips = self.trackers["global_on_local"].update(result.ids, result.correct, result.labels)
        metrics = {
            "global_on_local_acc": result.accuracy,
            "global_on_local_balanced_acc": result.balanced_accuracy,
            "nfr_global_on_local": flips.nfr,
            "local_test_size": self.local_test_size,
        }
        self._eval_cache = {"version": version, "metrics": metrics}
        self._save_state(save_model=False)
        return metrics

    def validate(self, model: FLModel) -> FLModel | str:
        """Global-on-local accuracy and its NFR (also run by FLARE before each train task)."""
        if not model.params:
            return ReturnCode.BAD_TASK_DATA
        return FLModel(metrics=self._evaluate_global(model))

    def train(self, model: FLModel) -> FLModel | str:
        from fedkper_monai.training import FedAvgStrategy, evaluate, round_learning_rate

        if not model.params:
            return ReturnCode.BAD_TASK_DATA
        round_index = int(model.current_round or 0)
        metrics = dict(self._evaluate_global(model))
        received = to_torch(model.params)
        # The received weights, frozen: this round's teacher (FedKPer, FedNTD) or proximal anchor (FedProx, Ditto).
        self.global_model.load_state_dict(received)
        self.global_model.eval()
        self.global_model.requires_grad_(False)
        # Local-only and Ditto keep their own model across rounds; everyone starts from the global initialization.
        keeps_own_model = not self.strategy.federated or self.strategy.personal_model
        if not keeps_own_model or not self._has_own_model:
            self.model.load_state_dict(received)
        lr = round_learning_rate(self.lr, self.lr_gamma, round_index)
        started = time.perf_counter()
        if self.strategy.personal_model:
            # Ditto: the global update is the received model trained with plain cross-entropy.
            self.upload_model.load_state_dict(received)
            self._fit(self.upload_model, FedAvgStrategy(), lr)
        trained = self._fit(self.model, self.strategy, lr)
        self._has_own_model = True
        train_seconds = time.perf_counter() - started
        if self.is_aborted():
            return ReturnCode.TASK_ABORTED
        personalized = evaluate(self.model, self.test_loader, device=self.device, num_classes=self.num_classes, amp=self.amp)
        flips = self.trackers["personalized"].update(personalized.ids, personalized.correct, personalized.labels)
        train_acc = evaluate(self.model, self.train_eval_loader, device=self.device, num_classes=self.num_classes, amp=self.amp).accuracy
        score = fedkper_score(train_acc, self.class_counts, self.num_classes)
        self._save_state(save_model=True)
        params = to_numpy((self.upload_model if self.strategy.personal_model else self.model).state_dict())
        metrics.update(
            {
                "personalized_acc": personalized.accuracy,
                "personalized_balanced_acc": personalized.balanced_accuracy,
                "nfr_personalized": flips.nfr,
                "train_acc": train_acc,
                "score": score,
                "num_samples": self.num_train,
                "train_loss": trained.mean_loss,
                "train_seconds": train_seconds,
                "lr": lr,
                "bytes_received": payload_bytes(params),
                **{f"strategy_{key}": value for key, value in trained.stats.items()},
            }
        )
        self._log_scalars(metrics, round_index)
        self.info(
            f"{self.site_name} round {round_index}: global-on-local {metrics['global_on_local_acc']:.3f}, "
            f"personalized {personalized.accuracy:.3f}, train acc {train_acc:.3f}, score {score:.4f}"
        )
        return FLModel(
            params_type=ParamsType.FULL,
            params=params,
            meta={"score": float(score), "num_samples": int(self.num_train), SITE_METRICS_KEY: metrics},
        )

    def _fit(self, network: torch.nn.Module, strategy: Any, lr: float) -> Any:
        """One round of local training of ``network`` with ``strategy`` (the shared loop)."""
        from fedkper_monai.training import make_optimizer, train_local

        optimizer = make_optimizer(network, name=self.optimizer_name, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return train_local(
            network,
            self.train_loader,
            strategy,
            epochs=self.local_epochs,
            optimizer=optimizer,
            device=self.device,
            teacher=self.global_model if strategy.needs_global_model else None,
            cache_teacher_logits=self.cache_teacher_logits,
            amp=self.amp,
        )

    def _log_scalars(self, metrics: dict[str, Any], round_index: int) -> None:
        if self.writer is None:
            return
        for key in ("personalized_acc", "global_on_local_acc", "nfr_personalized", "train_acc", "score", "train_loss"):
            value = metrics.get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, float(value), global_step=round_index)
