"""The server workflow: seeded site sampling, streaming aggregation, validation for BwT, metrics.

The schedule (who trains, who validates, what a round records) is :mod:`fedkper_monai.schedule`; the
lines are built by :class:`~fedkper_monai.flare.metrics.RunBook`. This module sends FLARE's tasks.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvflare.apis.fl_constant import ReturnCode
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.aggregator import FedKPerAggregator
from fedkper_monai.flare.failures import SiteFailures, build_failure_lines
from fedkper_monai.flare.messages import (
    GLOBAL_VERSION_KEY,
    REFUSAL_HEADER,
    RESUME_CHAIN_KEY,
    SITE_METRICS_KEY,
    VERSIONS_KEY,
    software_versions,
    version_mismatch,
)
from fedkper_monai.flare.metrics import MetricsFile, RunBook
from fedkper_monai.flare.resume import ABORTED, FINISHED, Checkpointer, stopped_runs_root
from fedkper_monai.flare.tracking import round_summary, send_round_scalars
from fedkper_monai.flare.weights import payload_bytes
from fedkper_monai.metrics_schema import METRICS_FILE
from fedkper_monai.schedule import RoundRecord, RoundSchedule

__all__ = ["FedKPerController"]


@dataclass
class _Run:
    """What one run of the controller holds: its components, schedule and metrics writer."""

    aggregator: FedKPerAggregator
    evaluator: Any
    schedule: RoundSchedule
    metrics: MetricsFile
    book: RunBook
    checkpoints: Checkpointer


class FedKPerController(ModelController):
    """FedKPer's (and every baseline's) server loop, as a FLARE ``ModelController``.

    Round r is one broadcast of the global model made in round r - 1: ``train`` to a seeded sample of
    sites and, when that model is due for validation (every ``validate_every`` rounds), ``validate`` to
    all other sites. The sampled sites evaluate it too, before they train (FLARE's pre-train validation),
    so every site reports its global-on-local accuracy in the same broadcast, and validation costs no
    broadcast of its own. While the sites work, the server evaluates that model on the global test list.
    Updates are aggregated as they arrive; the new model is saved; the last one is validated by all sites
    in one final broadcast. Lines are appended to ``metrics.jsonl`` in the server's run folder (see
    :mod:`fedkper_monai.flare.metrics` for the schema and the order).

    Args:
        num_rounds: FL rounds.
        sample_fraction: share of sites trained per round (at least ``min_sites_per_round``).
        min_sites_per_round: lower bound of the sample size.
        seed: seed of the per-round site sampling.
        validate_every: rounds between global-on-local validations of all sites (0 disables them); the
            last round's model is always validated.
        algorithm: name written into the metrics header (for reports).
        aggregator_id: id of the :class:`FedKPerAggregator` component.
        evaluator_id: id of a :class:`GlobalEvaluator` component ("" for none).
        tensorboard: send round scalars as FLARE analytics events (recorded by a ``TBAnalyticsReceiver``).
        persistor_id: id of the persistor component.
        min_responses: sampled sites that must answer a round's train task for the run to go on (default 1:
            a round proceeds with whoever answered; a site that fails, times out or dies is dropped for
            that round, written to ``metrics.jsonl`` as ``status: failed`` with the reason, and sampled
            again in later rounds like any other site).
        task_timeout: seconds any site may take for a task; None sizes it from the run: ``first_task_timeout``
            until a site has answered, then ``timeout_factor`` times the slowest answer so far, at least
            ``min_task_timeout``. Never infinite.
        first_task_timeout: the timeout before any site has answered (loading and caching the data included).
        min_task_timeout: the least timeout once sized from the run.
        timeout_factor: the sized timeout in multiples of the slowest answer so far.
        resume: continue a stopped run from its last completed round (:mod:`fedkper_monai.flare.resume`):
            ``"auto"`` the newest run of this job that stopped without ending, with the same settings (a site
            of it not connected now is left out, and the header's ``resumed`` entry names it);
            ``"never"``; or the id of the stopped job (an error when it cannot be continued).
    """

    def __init__(
        self,
        num_rounds: int = 5,
        sample_fraction: float = 1.0,
        min_sites_per_round: int = 1,
        seed: int = 0,
        validate_every: int = 1,
        algorithm: str = "fedkper",
        aggregator_id: str = "aggregator",
        evaluator_id: str = "global_evaluator",
        tensorboard: bool = True,
        persistor_id: str = "persistor",
        min_responses: int = 1,
        task_timeout: float | None = None,
        first_task_timeout: float = 1800.0,
        min_task_timeout: float = 60.0,
        timeout_factor: float = 5.0,
        resume: str = "auto",
    ) -> None:
        # Check for finished tasks every 0.1 s (FLARE's default 0.5 s adds up to a second per round).
        # ignore_result_error: a site's error never panics the job; this loop drops the site and checks
        # min_responses itself (FLARE's dynamic mode aborted the run when any of 3 sampled sites failed).
        super().__init__(persistor_id=persistor_id, task_check_period=0.1, ignore_result_error=True)
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        if min_responses < 1:
            raise ValueError(f"min_responses must be >= 1, got {min_responses}")
        for name, value in (("first_task_timeout", first_task_timeout), ("min_task_timeout", min_task_timeout),
                            ("timeout_factor", timeout_factor), ("task_timeout", task_timeout or 1.0)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.num_rounds = int(num_rounds)
        self.sample_fraction = float(sample_fraction)
        self.min_sites_per_round = int(min_sites_per_round)
        self.seed = int(seed)
        self.validate_every = int(validate_every)
        self.algorithm = algorithm
        self.aggregator_id = aggregator_id
        self.evaluator_id = evaluator_id
        self.tensorboard = bool(tensorboard)
        self.min_responses = int(min_responses)
        self.failures = SiteFailures(task_timeout, first_task_timeout, min_task_timeout, timeout_factor)
        self.resume = str(resume)
        self._chain: list[str] = []

    def _component(self, component_id: str) -> Any:
        return self.get_component(component_id) if component_id else None

    def run(self) -> None:
        aggregator = self._component(self.aggregator_id)
        if not isinstance(aggregator, FedKPerAggregator):
            self.panic(f"component {self.aggregator_id!r} must be a FedKPerAggregator, got {type(aggregator)}")
            return
        evaluator = self._component(self.evaluator_id)
        model = self.load_model()
        if model is None:
            return
        sites = sorted(client.name for client in self.engine.get_clients())
        schedule = RoundSchedule(
            sites, self.num_rounds, self.sample_fraction, self.seed, self.min_sites_per_round, self.validate_every
        )
        run_dir = Path(self.get_run_dir())
        checkpoints = Checkpointer(run_dir, self._job_name(), str(self.fl_ctx.get_job_id()), self._settings(sites, evaluator))
        run = _Run(aggregator, evaluator, schedule, MetricsFile(run_dir / METRICS_FILE), RunBook(), checkpoints)
        started = self._start(run, sites, evaluator, model.params)
        if started is None:
            return
        start, params, previous = started
        for round_index in range(start, self.num_rounds):
            if self.abort_signal.triggered:
                run.checkpoints.mark(ABORTED)
                return
            outcome = self._run_round(run, round_index, params, previous)
            if outcome is None:
                if self.abort_signal.triggered:
                    run.checkpoints.mark(ABORTED)
                return
            params, previous = outcome
            state = {"book": run.book.state_dict(), "evaluator": evaluator.state_dict() if evaluator else None,
                     "slowest": self.failures.slowest}
            run.checkpoints.save(round_index, params, previous, state)
        if self._finish(run, params, previous):
            run.checkpoints.mark(FINISHED)

    def _start(self, run: _Run, sites: list[str], evaluator: Any, initial: dict) -> tuple[int, dict, RoundRecord | None] | None:
        """Round, weights and pending record to start from: a stopped run's (resumed), else round 0; None when a
        named stopped run cannot be continued (the job then stops, saying why)."""
        root = stopped_runs_root(self.engine.get_workspace().get_root_dir())
        try:
            resumed = run.checkpoints.take_over(root, self.resume)
        except FedKPerError as error:  # a named stopped run that cannot be continued: say why, run nothing
            self.panic(str(error))
            return None
        if resumed is None:
            run.metrics.append({"run": self._header(sites, evaluator)})
            return 0, initial, None
        run.book.load_state_dict(resumed.book)
        if evaluator is not None:
            evaluator.load_state_dict(resumed.evaluator)
        self.failures.slowest = resumed.slowest
        self._chain = list(resumed.chain)
        # A site of the stopped run not connected now: the run goes on without it (flare/resume.py), said loudly.
        (self.warning if resumed.missing_sites else self.info)(resumed.describe())
        return resumed.next_round, resumed.params, resumed.previous

    def _run_round(
        self, run: _Run, round_index: int, params: dict, previous: RoundRecord | None
    ) -> tuple[dict, RoundRecord] | None:
        """One broadcast: train the sampled sites, validate the others on the same model, aggregate.

        Returns the new global weights and the round's record, or None when the run was aborted.
        """
        started = time.perf_counter()
        broadcast = run.schedule.broadcast(round_index, previous)
        validating = f", validating on {len(broadcast.validators)} other sites" if broadcast.validators else ""
        self.info(f"round {round_index}: training {broadcast.sampled}{validating}")
        model = self._as_task_model(params, round_index, version=round_index)
        run.aggregator.reset_stats()
        run.aggregator.set_reference(model.params)
        self.failures.start_round(started)
        train_metrics = self._send_train(model, broadcast.sampled, run.aggregator)
        validations = self._send_validate(model, broadcast.validators)
        if previous is not None and run.evaluator is not None:
            previous.global_eval = run.evaluator.evaluate(model.params)  # while the sites work
        if not self._wait_for_tasks():
            return None
        failed = self.failures.close_round(broadcast.sampled, broadcast.validators, train_metrics, validations)
        if not self._enough_answers(round_index, broadcast.sampled, train_metrics, failed):
            for line in build_failure_lines(round_index, failed):  # the record says why the run stopped
                run.metrics.append(line)
            return None
        if previous is not None:
            evaluations = run.schedule.evaluations(previous, validations, train_metrics)
            self._write_round(run, previous, evaluations, started - previous.started, model.params)
        try:
            params = run.aggregator.aggregate_model().params
        except RuntimeError as error:
            self.warning(f"round {round_index}: {error}; the global model is unchanged")
        record = run.schedule.record(
            broadcast, started, run.aggregator.last_weights, {**run.aggregator.last_dropped, **failed.get("train", {})},
            payload_bytes(model.params), train_metrics,
        )
        record.clipped, record.refused = dict(run.aggregator.last_clipped), list(run.aggregator.last_refused)
        for site in sorted(train_metrics):
            run.metrics.append(run.book.site_train_line(round_index, site, train_metrics[site], record.weights.get(site, 0.0)))
        for line in build_failure_lines(round_index, failed):
            run.metrics.append(line)
        self.save_model(self._as_task_model(params, round_index, version=round_index + 1))
        return params, record

    def _finish(self, run: _Run, params: dict, last: RoundRecord) -> bool:
        """The last global model: validated by every site in one broadcast while the server evaluates it."""
        model = self._as_task_model(params, self.num_rounds - 1, version=self.num_rounds)
        self.failures.start_round()
        validations = self._send_validate(model, run.schedule.final_broadcast(last, payload_bytes(model.params)))
        if run.evaluator is not None:
            last.global_eval = run.evaluator.evaluate(model.params)
        if not self._wait_for_tasks():
            return False
        targets = run.schedule.sites if last.validate else []
        failed = self.failures.close_round([], targets, {}, validations)
        for line in build_failure_lines(self.num_rounds - 1, failed, validate_round=self.num_rounds - 1):
            run.metrics.append(line)
        self._write_round(run, last, validations, time.perf_counter() - last.started, model.params)
        self.info(f"finished {self.num_rounds} rounds; metrics in {run.metrics.path}")
        return True

    def _send_train(self, model: FLModel, targets: list[str], aggregator: FedKPerAggregator) -> dict[str, dict[str, Any]]:
        """Send ``train`` to ``targets`` without waiting; updates stream into ``aggregator`` as they arrive.

        The returned dict fills with each site's metrics plus ``bytes_received`` (measured here).
        """
        train_metrics: dict[str, dict[str, Any]] = {}

        def on_train(result: FLModel) -> bool:
            site = str(result.meta.get("client_name"))
            self.failures.answered()
            if self._refused_versions(site, result):
                return False
            train_metrics[site] = dict(result.meta.get(SITE_METRICS_KEY) or result.metrics or {})
            train_metrics[site]["bytes_received"] = payload_bytes(result.params or {})
            accepted = aggregator.accept_model(result)
            result.params = None  # streaming: the update is in the running sums now
            return accepted

        self.send_model(task_name="train", data=model, targets=targets, timeout=self.failures.timeout(), callback=on_train)
        return train_metrics

    def _send_validate(self, model: FLModel, targets: list[str]) -> dict[str, dict[str, Any]]:
        """Send ``validate`` to ``targets`` without waiting; the returned dict fills with their metrics."""
        results: dict[str, dict[str, Any]] = {}
        if targets:

            def on_validate(result: FLModel) -> bool:
                self.failures.answered()
                if self._refused_versions(str(result.meta.get("client_name")), result):
                    return False
                results[str(result.meta.get("client_name"))] = dict(result.metrics or {})
                return True

            self.send_model(task_name="validate", data=model, targets=targets, timeout=self.failures.timeout(), callback=on_validate)
        return results

    def _accept_train_result(self, client_name: str, result: Any, fl_ctx: Any, is_unknown_task: bool = False) -> bool:
        """FLARE's check of a result's return code; a site's error (or the reason it refused the task) is recorded
        as its failure reason."""
        return_code = result.get_return_code()
        if return_code and return_code != ReturnCode.OK and not is_unknown_task:
            refusal = result.get_header(REFUSAL_HEADER)
            self.failures.failed(client_name, f"the site refused the task: {str(refusal)[:300]}" if refusal else
                                 f"the site's task ended with {return_code} (its own log has the error)")
        return super()._accept_train_result(client_name, result, fl_ctx, is_unknown_task)

    def _refused_versions(self, site: str, result: FLModel) -> bool:
        """Refuse a result from a site of other versions (one that did not refuse the task itself); recorded as
        its failure, both versions named."""
        mismatch = version_mismatch((result.meta or {}).get(VERSIONS_KEY), site, "the server")
        if mismatch:
            self.failures.failed(site, f"refused by the server: {mismatch}")
        return mismatch is not None

    def _enough_answers(self, round_index: int, sampled: list[str], train_metrics: dict, failed: dict) -> bool:
        """Whether enough sampled sites answered to go on; otherwise the run stops naming each failure."""
        if len(train_metrics) >= min(self.min_responses, len(sampled)):
            for site, reason in sorted(failed.get("train", {}).items()):
                self.warning(f"round {round_index}: {site} dropped for this round: {reason}")
            return True
        reasons = "; ".join(f"{site}: {reason}" for site, reason in sorted(failed.get("train", {}).items()))
        self.panic(f"round {round_index}: {len(train_metrics)} of {len(sampled)} sampled sites answered, "
                   f"min_responses is {self.min_responses}: {reasons}")
        return False

    def _wait_for_tasks(self) -> bool:
        """Wait until no task is standing; False when the run was aborted meanwhile."""
        while self.get_num_standing_tasks():
            if self.abort_signal.triggered:
                return False
            time.sleep(self._task_check_period)
        return not self.abort_signal.triggered

    def _write_round(self, run: _Run, record: RoundRecord, evaluations: dict, seconds: float, params: dict) -> None:
        """Append a round's validate lines and round line (last), log the round, and keep its model (``params``)
        as the best global model when it is a new best on the validation list."""
        lines = run.book.close_round(record, evaluations, seconds=seconds)
        for line in lines:
            run.metrics.append(line)
        if lines[-1]["best_val_round"] == record.round and hasattr(self.persistor, "save_best_model"):
            self.persistor.save_best_model(params, self.fl_ctx)
        self._log_round(lines[-1])

    def _as_task_model(self, params: dict, round_index: int, version: int) -> FLModel:
        return FLModel(
            params_type=ParamsType.FULL,
            params=params,
            current_round=round_index,
            total_rounds=self.num_rounds,
            meta={GLOBAL_VERSION_KEY: version, VERSIONS_KEY: software_versions(),
                  **({RESUME_CHAIN_KEY: list(self._chain)} if self._chain else {})},
        )

    def _job_name(self) -> str:
        """The job's name from the ``meta.json`` FLARE deploys into the run folder, else its id."""
        try:
            return str(json.loads((Path(self.get_run_dir()) / "meta.json").read_text())["name"])
        except (OSError, ValueError, KeyError, TypeError):
            return str(self.fl_ctx.get_job_id())

    def _settings(self, sites: list[str], evaluator: Any) -> dict[str, Any]:
        """What a continued run must share with the stopped one (any difference is named)."""
        return {
            "algorithm": self.algorithm,
            "seed": self.seed,
            "num_rounds": self.num_rounds,
            "sample_fraction": self.sample_fraction,
            "min_sites_per_round": self.min_sites_per_round,
            "validate_every": self.validate_every,
            "sites": sites,
            "network": dict(getattr(self.persistor, "network", {}) or {}),
            "class_names": evaluator.class_names if evaluator is not None else None,
        }

    def _header(self, sites: list[str], evaluator: Any) -> dict[str, Any]:
        persistor_network = getattr(self.persistor, "network", {}) if self.persistor else {}
        task = getattr(getattr(evaluator, "task", None), "name", "classification")
        return {
            "algorithm": self.algorithm,
            "job": self._job_name(),
            "job_id": self.fl_ctx.get_job_id(),
            "seed": self.seed,
            "num_rounds": self.num_rounds,
            "num_sites": len(sites),
            "sites": sites,
            "sample_fraction": self.sample_fraction,
            "num_classes": persistor_network.get("num_classes"),
            "class_names": evaluator.class_names if evaluator is not None else None,
            "network": persistor_network.get("name"),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            # Only a non-classification run names its task (metrics_schema.OPTIONAL_HEADER_FIELDS).
            **({"task": task} if task != "classification" else {}),
        }

    def _log_round(self, line: dict[str, Any]) -> None:
        self.info(round_summary(line))
        if self.tensorboard:  # FLARE's experiment tracking
            send_round_scalars(self, self.fl_ctx, line)
