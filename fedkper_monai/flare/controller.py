"""The server workflow: seeded site sampling, streaming aggregation, validation for BwT, metrics."""

from __future__ import annotations

import datetime
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsDataType, LogWriterName
from nvflare.apis.utils.analytix_utils import create_analytic_dxo, send_analytic_dxo
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from fedkper_monai.flare.aggregator import FedKPerAggregator
from fedkper_monai.flare.learner import GLOBAL_VERSION_KEY, SITE_METRICS_KEY
from fedkper_monai.flare.metrics import MetricsFile, RunBook
from fedkper_monai.flare.weights import payload_bytes

__all__ = ["FedKPerController", "sample_sites", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"
_TENSORBOARD_KEYS = ("global_acc", "mean_personalized_acc", "worst_personalized_acc", "global_nfr", "bwt", "seconds")


def sample_sites(sites: Sequence[str], fraction: float, seed: int, round_index: int, minimum: int = 1) -> list[str]:
    """The sites trained in ``round_index``: a seeded choice that depends only on (sites, fraction, seed, round).

    Every algorithm run with the same seed trains the same sites in the same rounds (a fair comparison).
    ``max(minimum, floor(fraction * n))`` sites are drawn without replacement, returned sorted.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"sample fraction must be in (0, 1], got {fraction}")
    ordered = sorted(sites)
    count = min(len(ordered), max(int(minimum), int(math.floor(fraction * len(ordered) + 1e-9))))
    rng = np.random.default_rng([int(seed), int(round_index)])
    chosen = rng.choice(len(ordered), size=count, replace=False)
    return sorted(ordered[i] for i in chosen)


class FedKPerController(ModelController):
    """FedKPer's (and every baseline's) server loop, as a FLARE ``ModelController``.

    Each round: send the global model to a seeded sample of sites (``train``); aggregate their updates as
    they arrive with the aggregator component; save the new global model; every ``validate_every`` rounds
    send it to all sites (``validate``) for global-on-local accuracy and BwT; evaluate it on the global
    test list; append the site and round lines to ``metrics.jsonl`` in the server's run folder.

    Args:
        num_rounds: FL rounds.
        sample_fraction: share of sites trained per round (at least ``min_sites_per_round``).
        min_sites_per_round: lower bound of the sample size.
        seed: seed of the per-round site sampling.
        validate_every: rounds between global-on-local validations of all sites (0 disables them).
        algorithm: name written into the metrics header (for reports).
        aggregator_id: id of the :class:`FedKPerAggregator` component.
        evaluator_id: id of a :class:`GlobalEvaluator` component ("" for none).
        tensorboard: send round scalars as FLARE analytics events (recorded by a ``TBAnalyticsReceiver``).
        persistor_id: id of the persistor component.
        train_timeout: seconds to wait for a site's train result (0 waits forever).
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
        train_timeout: int = 0,
    ) -> None:
        # Check for finished tasks every 0.1 s (FLARE's default 0.5 s adds up to a second per round).
        super().__init__(persistor_id=persistor_id, task_check_period=0.1)
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        self.num_rounds = int(num_rounds)
        self.sample_fraction = float(sample_fraction)
        self.min_sites_per_round = int(min_sites_per_round)
        self.seed = int(seed)
        self.validate_every = int(validate_every)
        self.algorithm = algorithm
        self.aggregator_id = aggregator_id
        self.evaluator_id = evaluator_id
        self.tensorboard = bool(tensorboard)
        self.train_timeout = int(train_timeout)

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
        metrics = MetricsFile(Path(self.get_run_dir()) / METRICS_FILE)
        metrics.append({"run": self._header(sites, evaluator)})
        book = RunBook()
        for round_index in range(self.num_rounds):
            if self.abort_signal.triggered:
                return
            started = time.perf_counter()
            sampled = sample_sites(sites, self.sample_fraction, self.seed, round_index, self.min_sites_per_round)
            self.info(f"round {round_index}: training {sampled}")
            model = self._as_task_model(model.params, round_index, version=round_index)
            site_metrics: dict[str, dict[str, Any]] = {}
            aggregator.reset_stats()
            aggregator.set_reference(model.params)

            def on_result(result: FLModel) -> bool:
                site = str(result.meta.get("client_name"))
                site_metrics[site] = dict(result.meta.get(SITE_METRICS_KEY) or result.metrics or {})
                site_metrics[site]["bytes_received"] = payload_bytes(result.params or {})
                accepted = aggregator.accept_model(result)
                result.params = None  # streaming: the update is in the running sums now
                return accepted

            self.send_model(task_name="train", data=model, targets=sampled, timeout=self.train_timeout, callback=on_result)
            while self.get_num_standing_tasks():
                if self.abort_signal.triggered:
                    return
                time.sleep(self._task_check_period)
            bytes_sent = payload_bytes(model.params) * len(sampled)
            try:
                new_params = aggregator.aggregate_model().params
            except RuntimeError as error:
                self.warning(f"round {round_index}: {error}; the global model is unchanged")
                new_params = model.params
            weights = dict(aggregator.last_weights)
            for site in sampled:
                if site not in site_metrics:
                    aggregator.last_dropped.setdefault(site, "no result")
                    weights.setdefault(site, 0.0)
            for site in sorted(site_metrics):
                metrics.append(book.site_train_line(round_index, site, site_metrics[site], weights.get(site, 0.0)))
            model = self._as_task_model(new_params, round_index, version=round_index + 1)
            self.save_model(model)
            book.mark_sampled(sampled)

            bwt, nfr_global_on_local = None, []
            if self.validate_every and ((round_index + 1) % self.validate_every == 0 or round_index == self.num_rounds - 1):
                current: dict[str, float] = {}
                for result in self.send_model_and_wait(task_name="validate", data=model, targets=sites):
                    site = str(result.meta.get("client_name"))
                    line = book.site_validate_line(round_index, site, result.metrics or {})
                    metrics.append(line)
                    if line["global_on_local_acc"] is not None:
                        current[site] = float(line["global_on_local_acc"])
                    if line["nfr_global_on_local"] is not None:
                        nfr_global_on_local.append(float(line["nfr_global_on_local"]))
                bwt = book.backward_transfer(current)
                bytes_sent += payload_bytes(model.params) * len(sites)
            global_eval = evaluator.evaluate(model.params) if evaluator is not None else None
            line = book.round_line(
                round_index,
                global_eval=global_eval,
                bwt=bwt,
                site_nfr_global_on_local=nfr_global_on_local,
                sampled=sampled,
                weights=weights,
                dropped=aggregator.last_dropped,
                seconds=time.perf_counter() - started,
                bytes_sent=bytes_sent,
                bytes_received=sum(m["bytes_received"] for m in site_metrics.values()),
            )
            metrics.append(line)
            self._log_round(line)
        self.info(f"finished {self.num_rounds} rounds; metrics in {metrics.path}")

    def _as_task_model(self, params: dict, round_index: int, version: int) -> FLModel:
        return FLModel(
            params_type=ParamsType.FULL,
            params=params,
            current_round=round_index,
            total_rounds=self.num_rounds,
            meta={GLOBAL_VERSION_KEY: version},
        )

    def _header(self, sites: list[str], evaluator: Any) -> dict[str, Any]:
        persistor_network = getattr(self.persistor, "network", {}) if self.persistor else {}
        return {
            "algorithm": self.algorithm,
            "job": self.fl_ctx.get_job_id(),
            "seed": self.seed,
            "num_rounds": self.num_rounds,
            "num_sites": len(sites),
            "sites": sites,
            "sample_fraction": self.sample_fraction,
            "num_classes": persistor_network.get("num_classes"),
            "class_names": evaluator.class_names if evaluator is not None else None,
            "network": persistor_network.get("name"),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def _log_round(self, line: dict[str, Any]) -> None:
        summary = ", ".join(
            f"{key} {line[key]:.3f}"
            for key in ("global_acc", "mean_personalized_acc", "worst_personalized_acc", "global_nfr", "bwt")
            if isinstance(line.get(key), float)
        )
        self.info(f"round {line['round']}: {summary}; {line['seconds']:.1f} s")
        if not self.tensorboard:
            return
        # FLARE's experiment tracking: a local analytics event that the server's TBAnalyticsReceiver records.
        for key in _TENSORBOARD_KEYS:
            value = line.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                dxo = create_analytic_dxo(
                    tag=f"global/{key}",
                    value=float(value),
                    data_type=AnalyticsDataType.SCALAR,
                    writer=LogWriterName.TORCH_TB,
                    global_step=int(line["round"]),
                )
                send_analytic_dxo(self, dxo=dxo, fl_ctx=self.fl_ctx, event_type=ANALYTIC_EVENT_TYPE)
