"""Server-side evaluation of the global model: the global test list (with its forgetting metrics) and the
held-out sites that never train (the "unseen patient populations" of the paper's abstract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from nvflare.apis.fl_component import FLComponent

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.sitedata import resolve_data_root
from fedkper_monai.flare.weights import to_torch
from fedkper_monai.job_fields import check_evaluator_args
from fedkper_monai.metrics_schema import site_sort_key
from fedkper_monai.training.networks import check_network_matches

__all__ = ["GlobalEvaluator", "VALIDATION_DATALIST"]

# The server's validation list, as ``fedkper-monai prepare`` writes it: its "validation" entries select the
# best global model (best_global_model.pt); they are never trained on and never part of global_acc.
VALIDATION_DATALIST = "global_val.json"


class GlobalEvaluator(FLComponent):
    """Evaluates each new global model on ``<data_root>/<datalist>`` (its ``"test"`` list).

    In simulation the server shares the sites' data root, so ``global_test.json`` made by
    ``fedkper-monai prepare`` is found there; at a real deployment the server may hold a test set of its
    own, or none (then global accuracy is reported as null). Every ``holdout-*.json`` in the data root (a
    site ``prepare --holdout-sites`` kept out of training) is evaluated too, all of its samples, each round.
    When :data:`VALIDATION_DATALIST` is in the data root too, its ``"validation"`` entries are evaluated each
    round with the same network and transforms (``val_accuracy``, no flips: only the model selection reads it).

    Args:
        data_root: folder of the global test datalist; default ``$FEDKPER_DATA_ROOT``.
        demo: use the built-in demo data when no data root is configured.
        datalist: file name of the global test datalist inside the data root.
        network: ``build_network`` arguments, as in the learner.
        transforms: transform config name, as in the learner.
        transform_settings: plain settings that config declares, as the learner's (e.g. ``intensity_range``).
        batch_size: evaluation batch size.
        device: ``auto``, ``cpu`` or ``cuda``.
        task: the task, as in the learner (``segmentation``: "accuracy" is mean foreground Dice, flips are
            voxel flips and per-class forgetting is per foreground class).
        task_args: the task's options, as the sites' ``task_args`` (e.g. ``{"sliding_window": {"roi_size":
            [96, 96, 96]}}`` to evaluate whole volumes patch by patch, as the sites do).
    """

    def __init__(
        self,
        network: dict,
        data_root: str | None = None,
        demo: bool = False,
        datalist: str = "global_test.json",
        transforms: str = "classification_2d",
        transform_settings: dict | None = None,
        batch_size: int = 256,
        device: str = "auto",
        cache: str = "memory",
        task: str = "classification",
        task_args: dict | None = None,
    ) -> None:
        from fedkper_monai.training.tasks import make_task

        super().__init__()
        self.task = make_task(task, **dict(task_args or {}))  # names a bad option of the task in its own words
        # The job is untrusted input here as at the sites: the same allow-lists (network, transform settings,
        # task options) and no code in any value. The launchers ran this check before FLARE started.
        check_evaluator_args(
            {"network": network, "data_root": data_root, "demo": demo, "datalist": datalist, "transforms": transforms,
             "transform_settings": dict(transform_settings or {}), "batch_size": batch_size, "device": device,
             "cache": cache, "task": task, "task_args": dict(task_args or {})},
            source="global evaluator args",
        )
        self.network_spec = dict(network)
        self.data_root = data_root
        self.demo = demo
        self.datalist_name = datalist
        self.transforms_name = transforms
        self.transform_settings = dict(transform_settings or {})
        self.batch_size = batch_size
        self.device_preference = device
        self.cache = cache
        self._ready = False
        self._available = False
        self._class_names: list[str] | None = None
        self.unseen: dict[str, Any] = {}
        self.val_loader: Any = None

    @property
    def class_names(self) -> list[str] | None:
        """Class names of the global test list (None without one)."""
        if not self._ready:
            self._setup()
        return self._class_names

    def _setup(self) -> None:
        from fedkper_monai.data import load_datalist
        from fedkper_monai.training import build_network, select_device

        self._ready = True
        try:
            root = resolve_data_root(self.data_root, demo=self.demo)
        except FedKPerError as error:
            self.logger.warning(f"no global test set: {error}")
            return
        path = root / self.datalist_name
        if not path.exists():
            self.logger.warning(f"no global test set at {path}: global accuracy will be null")
            return
        datalist = load_datalist(path)
        self.loader = self._loader(datalist, datalist.test, path)
        # Held-out sites: every sample of theirs is unseen by training.
        self.unseen = {
            holdout.stem: self._loader(data, data.training + data.test, holdout)
            for holdout in sorted(root.glob("holdout-*.json"), key=lambda p: site_sort_key(p.stem))
            for data in (load_datalist(holdout),)
        }
        val_path = root / VALIDATION_DATALIST
        if val_path.is_file():
            validation = load_datalist(val_path)
            if validation.validation:
                self.val_loader = self._loader(validation, validation.validation, val_path)
        self.device = select_device(self.device_preference)
        self.model = build_network(**self.network_spec).to(self.device)
        self.num_classes = datalist.num_classes
        self._class_names = list(datalist.class_names)
        self.tracker = self.task.flip_tracker(self.num_classes)
        self.source = Path(path)
        self._available = True

    def _loader(self, datalist: Any, entries: list, path: Path) -> Any:
        """An evaluation loader over ``entries`` of ``datalist`` (read from ``path``), transformed as at the sites."""
        from fedkper_monai.data import build_transforms, make_dataset, make_loader

        check_network_matches(self.network_spec, datalist.num_classes, path)
        # The sites' conversion: mixed gray/RGB data is converted to the channels its datalists record.
        settings = {**({"channels": datalist.channels} if datalist.channels else {}), **self.transform_settings}
        transform = build_transforms(self.transforms_name, image_size=self.network_spec.get("image_size"), augment=False, overrides=settings)
        return make_loader(make_dataset(entries, transform, cache=self.cache), batch_size=self.batch_size, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """The flip memory of the global test list (a resumed run continues it)."""
        if not self._ready:
            self._setup()
        return {"tracker": self.tracker.state_dict()} if self._available else {}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not self._ready:
            self._setup()
        if self._available and state and state.get("tracker"):
            self.tracker.load_state_dict(state["tracker"])

    def evaluate(self, params: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
        """Accuracy, balanced accuracy, NFR and per-class forgetting of ``params`` on the test list, its accuracy on
        the held-out sites and on the validation list (``val_accuracy``, None without one); None without a test set."""
        from fedkper_monai.training import evaluate

        if not self._ready:
            self._setup()
        if not self._available:
            return None
        self.model.load_state_dict(to_torch(params))
        result = evaluate(self.model, self.loader, device=self.device, num_classes=self.num_classes, task=self.task)
        flips = self.tracker.update(result.ids, result.correct, result.labels)
        unseen = {
            site: evaluate(self.model, loader, device=self.device, num_classes=self.num_classes, task=self.task).accuracy
            for site, loader in self.unseen.items()
        }
        val_accuracy = None
        if self.val_loader is not None:
            val_accuracy = evaluate(self.model, self.val_loader, device=self.device, num_classes=self.num_classes, task=self.task).accuracy
        return {
            "accuracy": result.accuracy,
            "balanced_accuracy": result.balanced_accuracy,
            "nfr": flips.nfr,
            "per_class_forgetting": list(flips.per_class_forgetting),
            "negative_flips": flips.negative_flips,
            "positive_flips": flips.positive_flips,
            "unchanged": flips.unchanged,
            "num_samples": result.num_samples,
            "unseen_site_acc": unseen,
            "val_accuracy": val_accuracy,
        }
