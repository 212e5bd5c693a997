"""The FLARE site: a ``ModelLearner`` that translates FLARE's ``FLModel`` to :class:`~fedkper_monai.training.site.Site`.

The round itself (train, evaluate, flips, score, state on disk) is FLARE-free and lives in
:mod:`fedkper_monai.training.site`; this adapter finds the site's data, converts weights and metrics, and
logs.
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model_learner import ModelLearner
from nvflare.app_common.executors.model_learner_executor import ModelLearnerExecutor

from fedkper_monai.flare.sitedata import site_datalist_path
from fedkper_monai.flare.weights import to_numpy, to_torch

__all__ = ["FedKPerLearner", "GLOBAL_VERSION_KEY", "SITE_METRICS_KEY", "report_to_flmodel", "received_version", "is_initial"]

# Meta key set by the controller: how many aggregations produced the model in this task.
GLOBAL_VERSION_KEY = "global_version"
# Meta key of a train result's metrics. FLModel.metrics of a result that also carries weights is
# overwritten by FLARE's ModelLearnerExecutor with its pre-train validation metrics, so ours travel here.
SITE_METRICS_KEY = "site_metrics"
# Scalars also sent to TensorBoard through FLARE's experiment tracking.
_TENSORBOARD_KEYS = ("personalized_acc", "global_on_local_acc", "nfr_personalized", "train_acc", "score", "train_loss")


class FedKPerLearner(ModelLearner):
    """One FL site in FLARE: builds a :class:`~fedkper_monai.training.site.Site` and runs its tasks.

    Args:
        data_root: folder holding ``<site-name>.json``; default ``$FEDKPER_DATA_ROOT``, or the file
            ``$FEDKPER_DATALIST`` (see :func:`fedkper_monai.flare.sitedata.site_datalist_path`).
        demo: use the built-in demo data when no data root is configured.
        analytic_sender_id: id of a FLARE ``TBWriter`` component for TensorBoard scalars ("" for none).
        **settings: the site's local settings, the fields of
            :class:`~fedkper_monai.training.site.SiteConfig` (algorithm, algorithm_args, network,
            transforms, local_epochs, batch_size, lr, lr_gamma, seed, device, amp, ...); their defaults live there.
    """

    def __init__(self, data_root: str | None = None, demo: bool = False, analytic_sender_id: str = "log_writer", **settings: Any) -> None:
        # FLARE 2.9 warns once per process that ModelLearner is deprecated in favour of its Client API (it
        # forces that warning past any filter); ModelLearner and its executor remain supported, and our jobs use them.
        super().__init__()
        from fedkper_monai.training.site import SiteConfig

        self.data_root = data_root
        self.demo = demo
        self.analytic_sender_id = analytic_sender_id
        # Checked here, when FLARE builds the component, so a typo in the job fails at once and by name.
        self.config = SiteConfig.from_mapping(settings, source="learner args")
        self.site: Any = None

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
        if self.site is not None:
            return
        from fedkper_monai.training.site import Site

        datalist = site_datalist_path(self.site_name, self.data_root, demo=self.demo)
        self.site = Site(self.site_name, datalist, self.config, state_dir=self.job_root)
        self.writer = self.get_component(self.analytic_sender_id) if self.analytic_sender_id else None
        if self.site.restored:
            self.info(f"{self.site_name}: restored flip memories and personalized model from {self.job_root}")
        self.info(self.site.describe())

    def validate(self, model: FLModel) -> FLModel | str:
        """Global-on-local figures and their NFR (also run by FLARE before each train task)."""
        if not model.params:
            return ReturnCode.BAD_TASK_DATA
        return FLModel(metrics=self.site.evaluate_global(to_torch(model.params), received_version(model), initial=is_initial(model)))

    def train(self, model: FLModel) -> FLModel | str:
        if not model.params:
            return ReturnCode.BAD_TASK_DATA
        round_index = int(model.current_round or 0)
        report = self.site.train_round(
            to_torch(model.params), round_index, received_version(model), is_aborted=self.is_aborted, initial=is_initial(model)
        )
        if report is None:
            return ReturnCode.TASK_ABORTED
        self._log(report, round_index)
        return report_to_flmodel(report)

    def _log(self, report: Any, round_index: int) -> None:
        """The round in the site's own log (diagnostics included); shared metrics only to TensorBoard, whose
        scalars FLARE forwards to the server."""
        metrics, diagnostics = report.metrics, report.diagnostics
        self.info(
            f"{self.site_name} round {round_index}: global-on-local {metrics['global_on_local_acc']:.3f}, "
            f"personalized {metrics['personalized_acc']:.3f}, score {report.score:.4f}; site-only: "
            + ", ".join(f"{key} {value:.4g}" for key, value in diagnostics.items())
        )
        if self.writer is None:
            return
        for key in _TENSORBOARD_KEYS:
            value = metrics.get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, float(value), global_step=round_index)


def report_to_flmodel(report: Any) -> FLModel:
    """A :class:`~fedkper_monai.training.site.SiteReport` as the train result FLARE sends to the server."""
    return FLModel(
        params_type=ParamsType.FULL,
        params=to_numpy(report.upload),
        meta={"score": report.score, "num_samples": report.num_samples, SITE_METRICS_KEY: report.metrics},
    )


def is_initial(model: FLModel) -> bool:
    """Whether ``model`` is the controller's never-trained initial model (version 0: no aggregation yet)."""
    return (model.meta or {}).get(GLOBAL_VERSION_KEY) == 0


def received_version(model: FLModel) -> Any:
    """Identity of a received global model: the controller's version, else (another controller) the round.

    FLARE's pre-train validation and the train task of one round share it, so the model is evaluated once.
    """
    version = (model.meta or {}).get(GLOBAL_VERSION_KEY)
    return ["round", model.current_round] if version is None else version
