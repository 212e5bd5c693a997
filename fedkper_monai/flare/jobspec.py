"""FLARE job folders as data: one function builds every job of ``jobs/`` and the variants ``compare`` runs.

The committed folders in ``jobs/`` are written by ``python -m fedkper_monai.flare.jobspec jobs`` and a
test checks that they match, so the jobs never drift apart in the settings they share.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkper_monai.io import atomic_write_json

__all__ = ["JobSettings", "job_configs", "write_job", "STANDARD_JOBS", "load_job", "save_job_configs"]

_PKG = "fedkper_monai.flare"


@dataclass
class JobSettings:
    """Everything that differs between our jobs; defaults are the paper's setting (DESIGN §1)."""

    name: str
    algorithm: str = "fedkper"
    algorithm_args: dict[str, Any] = field(default_factory=dict)
    weighting: str = "score"
    network: dict[str, Any] = field(
        default_factory=lambda: {
            "name": "reference_cnn",
            "spatial_dims": 2,
            "in_channels": 3,
            "num_classes": 5,
            "image_size": [28, 28],
        }
    )
    transforms: str = "classification_2d"
    num_rounds: int = 200
    sample_fraction: float = 0.1
    min_clients: int = 2
    seed: int = 0
    validate_every: int = 1
    local_epochs: int = 5
    batch_size: int = 12
    lr: float = 0.01
    lr_gamma: float = 0.99
    demo: bool = False


def job_configs(settings: JobSettings) -> tuple[dict, dict, dict]:
    """``(meta.json, config_fed_server.json, config_fed_client.json)`` of one job."""
    meta = {
        "name": settings.name,
        "resource_spec": {},
        "deploy_map": {"app": ["@ALL"]},
        "min_clients": settings.min_clients,
    }
    data = {"data_root": None, "demo": settings.demo, "transforms": settings.transforms}
    server = {
        "format_version": 2,
        # Sites come back for their next task this many seconds after the last one (FLARE's default is 2 s,
        # a fixed wait per round phase that dominated the round time of small medical models).
        "server": {"task_request_interval": 0.25},
        "workflows": [
            {
                "id": "controller",
                "path": f"{_PKG}.controller.FedKPerController",
                "args": {
                    "num_rounds": settings.num_rounds,
                    "sample_fraction": settings.sample_fraction,
                    "seed": settings.seed,
                    "validate_every": settings.validate_every,
                    "algorithm": settings.algorithm,
                },
            }
        ],
        "components": [
            {"id": "persistor", "path": f"{_PKG}.persistor.NetworkPersistor", "args": {"network": settings.network, "seed": settings.seed}},
            {"id": "aggregator", "path": f"{_PKG}.aggregator.FedKPerAggregator", "args": {"weighting": settings.weighting}},
            {"id": "global_evaluator", "path": f"{_PKG}.evaluator.GlobalEvaluator", "args": {"network": settings.network, **data}},
            {
                "id": "tb_receiver",
                "path": "nvflare.app_opt.tracking.tb.tb_receiver.TBAnalyticsReceiver",
                "args": {"events": ["analytix_log_stats", "fed.analytix_log_stats"]},
            },
        ],
    }
    client = {
        "format_version": 2,
        "executors": [
            {
                "tasks": ["train", "validate"],
                "executor": {
                    "path": "nvflare.app_common.executors.model_learner_executor.ModelLearnerExecutor",
                    "args": {"learner_id": "learner"},
                },
            }
        ],
        "components": [
            {
                "id": "learner",
                "path": f"{_PKG}.learner.FedKPerLearner",
                "args": {
                    **data,
                    "algorithm": settings.algorithm,
                    "algorithm_args": settings.algorithm_args,
                    "network": settings.network,
                    "local_epochs": settings.local_epochs,
                    "batch_size": settings.batch_size,
                    "lr": settings.lr,
                    "lr_gamma": settings.lr_gamma,
                    "seed": settings.seed,
                },
            },
            {"id": "log_writer", "path": "nvflare.app_opt.tracking.tb.tb_writer.TBWriter", "args": {}},
            {
                "id": "event_to_fed",
                "path": "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent",
                "args": {"events_to_convert": ["analytix_log_stats"], "fed_event_prefix": "fed."},
            },
        ],
        "task_data_filters": [],
        "task_result_filters": [],
    }
    return meta, server, client


def save_job_configs(folder: str | Path, meta: dict, server: dict, client: dict) -> Path:
    """Write a job folder (``meta.json`` and ``app/config/*.json``) atomically file by file."""
    folder = Path(folder)
    atomic_write_json(folder / "meta.json", meta)
    atomic_write_json(folder / "app" / "config" / "config_fed_server.json", server)
    atomic_write_json(folder / "app" / "config" / "config_fed_client.json", client)
    return folder


def write_job(folder: str | Path, settings: JobSettings) -> Path:
    """Write the job folder of ``settings``."""
    return save_job_configs(folder, *job_configs(settings))


def load_job(folder: str | Path) -> tuple[dict, dict, dict]:
    """Read a job folder's three JSON files (deep copies, free to edit)."""
    folder = Path(folder)
    paths = (folder / "meta.json", folder / "app" / "config" / "config_fed_server.json", folder / "app" / "config" / "config_fed_client.json")
    for path in paths:
        if not path.exists():
            from fedkper_monai.errors import DataError

            raise DataError(path, "missing: a job folder needs meta.json and app/config/config_fed_{server,client}.json")
    return tuple(copy.deepcopy(json.loads(path.read_text())) for path in paths)  # type: ignore[return-value]


_MEDMNIST = dict(num_rounds=200, sample_fraction=0.1, min_clients=2)

STANDARD_JOBS: dict[str, JobSettings] = {
    "fedkper_demo": JobSettings(
        name="fedkper_demo",
        network={"name": "reference_cnn", "spatial_dims": 2, "in_channels": 1, "num_classes": 8, "image_size": [28, 28]},
        num_rounds=5,
        sample_fraction=0.5,
        min_clients=2,
        local_epochs=5,
        batch_size=16,
        lr=0.05,
        demo=True,
    ),
    "fedkper_medmnist": JobSettings(name="fedkper_medmnist", **_MEDMNIST),
    "fedavg_medmnist": JobSettings(name="fedavg_medmnist", algorithm="fedavg", weighting="samples", **_MEDMNIST),
    "fedprox_medmnist": JobSettings(
        name="fedprox_medmnist", algorithm="fedprox", algorithm_args={"mu": 0.01}, weighting="samples", **_MEDMNIST
    ),
    "fedntd_medmnist": JobSettings(
        name="fedntd_medmnist", algorithm="fedntd", algorithm_args={"tau": 1.0, "beta": 1.0}, weighting="samples", **_MEDMNIST
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Write every standard job under the given folder (default ``jobs``)."""
    target = Path((argv or sys.argv[1:] or ["jobs"])[0])
    for name, settings in STANDARD_JOBS.items():
        print(write_job(target / name, settings))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
