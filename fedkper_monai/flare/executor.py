"""The FLARE site: a plain ``Executor`` that translates FLARE's train and validate tasks to
:class:`~fedkper_monai.training.site.Site` calls.

The round itself (train, evaluate, flips, score, state on disk) is FLARE-free and lives in
:mod:`fedkper_monai.training.site`; this adapter finds the site's data and local choices, converts weights
and metrics, and logs. It replaces the ``ModelLearner`` adapter, which FLARE 2.9 deprecates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nvflare.apis.dxo import MetaKey
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FilterKey, FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.security.logging import secure_format_exception

from fedkper_monai.flare.local_choices import read_site_config
from fedkper_monai.flare.messages import (
    REFUSAL_HEADER,
    VERSIONS_KEY,
    is_initial,
    received_version,
    report_to_flmodel,
    resume_chain,
    round_shared,
    software_versions,
    version_mismatch,
)
from fedkper_monai.flare.resume import job_folder, stopped_runs_root
from fedkper_monai.flare.sitedata import site_datalist_path
from fedkper_monai.flare.weights import to_torch

__all__ = ["FedKPerExecutor"]

# Scalars also sent to TensorBoard through FLARE's experiment tracking.
_TENSORBOARD_KEYS = ("personalized_acc", "global_on_local_acc", "personalized_dice", "global_on_local_dice", "nfr_personalized", "train_acc", "score", "train_loss")


class FedKPerExecutor(Executor):
    """One FL site in FLARE: builds a :class:`~fedkper_monai.training.site.Site` at job start and runs its tasks.

    ``train`` first evaluates the received model on the local test split (FLARE's pre-train validation:
    the figures also travel as the result's ``MetaKey.INITIAL_METRICS``), then runs the site round;
    ``validate`` evaluates the received model only. An aborted task answers ``TASK_ABORTED``. A task from a
    server of another fedkper-monai or FLARE version is refused before any work, the reply naming both
    versions (:func:`~fedkper_monai.flare.messages.version_mismatch`); the server records it as the site's failure.

    Where the data is: the site's own ``local/fedkper_site.json`` (written by ``fedkper-monai site-config``)
    wins over the job's ``data_root``, which a simulation sets; else ``$FEDKPER_DATA_ROOT`` or
    ``$FEDKPER_DATALIST`` (see :func:`fedkper_monai.flare.sitedata.site_datalist_path`). The same file's
    privacy choices (:mod:`fedkper_monai.flare.local_privacy`) apply to everything the site sends: the
    smaller ``score_epsilon`` of site and job, ``share_decimals`` on every shared rate, and the update as a
    ``DIFF`` when ``send_diff`` is set or FLARE's site scope holds result filters.

    Args:
        data_root: folder holding ``<site-name>.json`` (simulation; real sites leave it unset).
        demo: use the built-in demo data when no data root is configured.
        analytic_sender_id: id of a FLARE ``TBWriter`` component for TensorBoard scalars ("" for none).
        train_task, validate_task: FLARE task names.
        **settings: the site's settings, the fields of :class:`~fedkper_monai.training.site.SiteConfig`
            (algorithm, algorithm_args, network, transforms, local_epochs, batch_size, lr, lr_gamma, seed,
            device, amp, ...); their defaults live there.
    """

    def __init__(
        self,
        data_root: str | None = None,
        demo: bool = False,
        analytic_sender_id: str = "log_writer",
        train_task: str = AppConstants.TASK_TRAIN,
        validate_task: str = AppConstants.TASK_VALIDATION,
        **settings: Any,
    ) -> None:
        super().__init__()
        from fedkper_monai.training.site_config import SiteConfig

        self.data_root = data_root
        self.demo = demo
        self.analytic_sender_id = analytic_sender_id
        self.train_task, self.validate_task = train_task, validate_task
        self.settings = dict(settings)
        # Checked here, when FLARE builds the component, so a typo in the job fails at once and by name.
        self.config = SiteConfig.from_mapping(settings, source="site executor args")
        self.site: Any = None
        self.site_name = ""
        self.writer: Any = None
        self._where: tuple[str, str, str] | None = None  # site name, run folder, local/ (set at START_RUN)
        self._workspace_root = ""
        self._resume_checked = False
        self._local: dict[str, Any] = {}  # the site's own choices (fedkper_site.json)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Set up when the job starts, not at this site's first task.

        With 10% of the sites sampled per round a site's first task can be many rounds in; a broken
        datalist should surface at once and cache building should not stall the round that first needs
        it. A failure here is logged and raised again by the first task.
        """
        if event_type != EventType.START_RUN:
            return
        engine = fl_ctx.get_engine()
        workspace = engine.get_workspace()
        self.writer = engine.get_component(self.analytic_sender_id) if self.analytic_sender_id else None
        self._where = (fl_ctx.get_identity_name(), workspace.get_run_dir(fl_ctx.get_job_id()), workspace.get_site_config_dir())
        self._workspace_root = workspace.get_root_dir()
        try:
            self.setup(*self._where)
        except Exception as error:  # noqa: BLE001 - FLARE would swallow it; the first task reports it again
            self.log_error(fl_ctx, f"site setup failed: {secure_format_exception(error)}")

    def setup(self, site_name: str, job_root: str | Path, local_dir: str | Path | None = None) -> None:
        """Build the site (idempotent): its datalist and choices from ``local_dir`` (its ``local/``), state in ``job_root``."""
        if self.site is not None:
            return
        from fedkper_monai.training.site import Site, SiteConfig

        local = read_site_config(local_dir) if local_dir is not None else {}
        config = self.config
        overrides = {"device": local["device"]} if local.get("device") else {}
        if local.get("score_epsilon") is not None:  # the stronger (smaller) epsilon of the site and the job wins
            overrides["score_epsilon"] = min(local["score_epsilon"], config.score_epsilon or float("inf"))
        if overrides:
            config = SiteConfig.from_mapping({**self.settings, **overrides}, source="site executor args")
        self._local = local
        if local.get("datalist"):
            datalist = Path(local["datalist"])
        else:
            datalist = site_datalist_path(site_name, local.get("data_root") or self.data_root, demo=self.demo)
        self.site_name = site_name
        self.site = Site(site_name, datalist, config, state_dir=job_root)
        if self.site.restored:
            self.logger.info(f"{site_name}: restored flip memories and personalized model from {job_root}")
        self.logger.info(self.site.describe())

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name not in (self.train_task, self.validate_task):
            self.log_error(fl_ctx, f"unknown task {task_name!r}")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        try:
            model = FLModelUtils.from_shareable(shareable)
        except ValueError:
            self.log_error(fl_ctx, "the task holds no model")
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if not model.params:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        site = self.site_name or fl_ctx.get_identity_name() or "this site"
        refusal = version_mismatch((model.meta or {}).get(VERSIONS_KEY), "the server", site)
        if refusal:  # before any work: weights and messages of other versions may not mean the same
            self.log_error(fl_ctx, f"{task_name} refused: {refusal}")
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply.set_header(REFUSAL_HEADER, refusal)
            return reply
        try:
            if self.site is None:
                if self._where is None:
                    raise RuntimeError("the site was not set up: FLARE sent no START_RUN")
                self.setup(*self._where)
            self._adopt_stopped_state(resume_chain(model), fl_ctx)
            if task_name == self.validate_task:
                return FLModelUtils.to_shareable(FLModel(metrics=self._shared(self._validate(model)),
                                                         meta={VERSIONS_KEY: software_versions()}))
            return self._train(model, abort_signal, fl_ctx)
        except Exception as error:  # noqa: BLE001 - the server records the site's failure; the log has why
            self.log_exception(fl_ctx, f"{task_name} failed: {secure_format_exception(error)}")
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)

    def _adopt_stopped_state(self, chain: list[str], fl_ctx: FLContext) -> None:
        """In a resumed run, take over this site's state from the newest stopped job that holds it (once)."""
        if self._resume_checked or not chain:
            return
        self._resume_checked = True
        root = stopped_runs_root(self._workspace_root)
        for job_id in chain:
            if self.site.adopt_state(job_folder(root, job_id)):
                self.log_info(fl_ctx, f"{self.site_name}: continuing with the state the stopped job {job_id} left")
                return

    def _validate(self, model: FLModel) -> dict[str, Any]:
        """Global-on-local figures and their NFR (computed once per received model)."""
        return self.site.evaluate_global(to_torch(model.params), received_version(model), initial=is_initial(model))

    def _train(self, model: FLModel, abort_signal: Signal, fl_ctx: FLContext) -> Shareable:
        initial_metrics = self._validate(model)  # FLARE's pre-train validation; the round reuses it
        round_index = int(model.current_round or 0)
        report = self.site.train_round(
            to_torch(model.params), round_index, received_version(model),
            is_aborted=lambda: abort_signal.triggered, initial=is_initial(model),
        )
        if report is None:
            return make_reply(ReturnCode.TASK_ABORTED)
        self._log(report, round_index, fl_ctx)
        received = model.params if self._sends_diff(fl_ctx) else None
        result = report_to_flmodel(report, received=received, decimals=self._local.get("share_decimals"))
        result.meta[MetaKey.INITIAL_METRICS] = self._shared(initial_metrics)
        return FLModelUtils.to_shareable(result)

    def _shared(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Metrics as they leave the site (rounded when the site set ``share_decimals``)."""
        return round_shared(metrics, self._local.get("share_decimals"))

    def _sends_diff(self, fl_ctx: FLContext) -> bool:
        """Send trained - received: the site asked for it, or FLARE will filter this site's results (its
        privacy filters act on a weight difference; a full model they would clip or leave incomplete)."""
        if self._local.get("send_diff"):
            return True
        scope = fl_ctx.get_prop(FLContextKey.SCOPE_OBJECT)
        return bool(scope is not None and scope.task_result_filters.get(FilterKey.OUT))

    def _log(self, report: Any, round_index: int, fl_ctx: FLContext) -> None:
        """The round in the site's own log (diagnostics included); shared metrics only to TensorBoard, whose
        scalars FLARE forwards to the server."""
        metrics, diagnostics = report.metrics, report.diagnostics
        metric = "dice" if "personalized_dice" in metrics else "acc"  # a segmentation site reports Dice
        self.log_info(
            fl_ctx,
            f"{self.site_name} round {round_index}: global-on-local {metrics[f'global_on_local_{metric}']:.3f}, "
            f"personalized {metrics[f'personalized_{metric}']:.3f}, score {report.score:.4f}; site-only: "
            + ", ".join(f"{key} {value:.4g}" for key, value in diagnostics.items()),
        )
        if self.writer is None:
            return
        shared = self._shared(metrics)  # FLARE forwards these scalars to the server
        for key in _TENSORBOARD_KEYS:
            value = shared.get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, float(value), global_step=round_index)
