"""FLARE job folders as data: one function builds every job of ``jobs/`` and the variants ``compare`` runs.

The committed folders in ``jobs/`` are written by ``python -m fedkper_monai.flare.jobspec jobs`` and a
test checks that they match, so the jobs never drift apart in the settings they share. What an algorithm
sets in a job (the learner's strategy and parameters, the aggregator's weighting, the controller's label)
comes from the algorithm registry, :mod:`fedkper_monai.algorithm_registry`, through :func:`set_algorithm`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkper_monai.algorithm_registry import Algorithm, get_algorithm
from fedkper_monai.errors import DataError, FedKPerError
from fedkper_monai.io import atomic_write_json

__all__ = [
    "JobSettings",
    "job_configs",
    "job_component",
    "site_args",
    "controller_args",
    "CONTROLLER",
    "SITE_EXECUTOR",
    "GLOBAL_EVALUATOR",
    "PERSISTOR",
    "component_classes",
    "set_algorithm",
    "write_job",
    "STANDARD_JOBS",
    "load_job",
    "save_job_configs",
]

_PKG = "fedkper_monai.flare"
# The site: a plain FLARE Executor whose args are the site's settings (SiteConfig fields, data_root, demo).
SITE_EXECUTOR = f"{_PKG}.executor.FedKPerExecutor"
# The server components whose args a job fills with a network spec (and the evaluator: the sites' data settings).
GLOBAL_EVALUATOR = f"{_PKG}.evaluator.GlobalEvaluator"
PERSISTOR = f"{_PKG}.persistor.NetworkPersistor"
CONTROLLER = f"{_PKG}.controller.FedKPerController"


@dataclass
class JobSettings:
    """Everything that differs between our jobs; defaults are the paper's setting (docs/design.md, The reference setting).

    ``algorithm`` names an entry of the algorithm registry, which decides the local strategy, its
    parameters and the aggregation weighting.
    """

    name: str
    algorithm: str = "fedkper"
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
    # A non-classification task (learner and evaluator) and more site settings (SiteConfig fields).
    task: str = "classification"
    site_settings: dict[str, Any] = field(default_factory=dict)


def job_component(config: dict, component_id: str) -> dict:
    """The component ``component_id`` of a job config (server or client)."""
    for component in config.get("components", []):
        if component.get("id") == component_id:
            return component
    raise FedKPerError(f"job config has no component {component_id!r}")


def site_args(client: dict) -> dict:
    """The args of a client config's site executor (the site's settings; edit them in place)."""
    for entry in client.get("executors", []):
        executor = entry.get("executor", {})
        if executor.get("path") == SITE_EXECUTOR:
            return executor.setdefault("args", {})
    raise FedKPerError(f"job config has no {SITE_EXECUTOR} executor (a job written before it named the "
                       "deprecated FedKPerLearner: write it again with `python -m fedkper_monai.flare.jobspec`)")


def controller_args(server: dict) -> dict:
    """The args of a server config's controller workflow (rounds, sampling, aggregation; edit them in place).

    Our jobs have exactly one workflow, the controller; anything else is a job this package did not write.

    Raises:
        FedKPerError: the server config has no controller workflow.
    """
    workflows = server.get("workflows")
    if not isinstance(workflows, list) or not workflows or not isinstance(workflows[0], dict):
        raise FedKPerError("job server config has no workflow (expected the FedKPer controller as workflows[0])")
    return workflows[0].setdefault("args", {})


def set_algorithm(meta: dict, server: dict, client: dict, algorithm: Algorithm) -> None:
    """Make a job's configs (changed in place) run ``algorithm``.

    Sets the controller's ``algorithm`` label (the name reports show), the learner's strategy and its
    parameters, the aggregator's weighting (and its opt-in blend remedy); a pooled (centralized) job needs one site.
    """
    controller_args(server)["algorithm"] = algorithm.name
    learner = site_args(client)
    learner["algorithm"] = algorithm.strategy
    learner["algorithm_args"] = dict(algorithm.params)
    aggregator = job_component(server, "aggregator")["args"]
    aggregator["weighting"] = algorithm.weighting
    aggregator.pop("min_effective_sites", None)
    if algorithm.min_effective_sites:
        aggregator["min_effective_sites"] = algorithm.min_effective_sites
    if algorithm.pooled:
        meta["min_clients"] = 1


def job_configs(settings: JobSettings) -> tuple[dict, dict, dict]:
    """``(meta.json, config_fed_server.json, config_fed_client.json)`` of one job."""
    meta = {
        "name": settings.name,
        "resource_spec": {},
        "deploy_map": {"app": ["@ALL"]},
        "min_clients": settings.min_clients,
    }
    data = {"data_root": None, "demo": settings.demo, "transforms": settings.transforms}
    task = {"task": settings.task} if settings.task != "classification" else {}
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
                },
            }
        ],
        "components": [
            {"id": "persistor", "path": PERSISTOR, "args": {"network": settings.network, "seed": settings.seed}},
            {"id": "aggregator", "path": f"{_PKG}.aggregator.FedKPerAggregator", "args": {}},
            {"id": "global_evaluator", "path": GLOBAL_EVALUATOR, "args": {"network": settings.network, **data, **task}},
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
                    "path": SITE_EXECUTOR,
                    "args": {
                        **data,
                        "network": settings.network,
                        "local_epochs": settings.local_epochs,
                        "batch_size": settings.batch_size,
                        "lr": settings.lr,
                        "lr_gamma": settings.lr_gamma,
                        "seed": settings.seed,
                        **task,
                        **settings.site_settings,
                    },
                },
            }
        ],
        "components": [
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
    set_algorithm(meta, server, client, get_algorithm(settings.algorithm))
    return meta, server, client


def _config_paths(config: dict) -> list[str]:
    """Every class path a FLARE app config names (workflows, components, executors, filters)."""
    paths = [entry["path"] for section in ("workflows", "components") for entry in config.get(section, [])]
    paths += [entry["executor"]["path"] for entry in config.get("executors", [])]
    for section in ("task_data_filters", "task_result_filters"):
        paths += [item["path"] for entry in config.get(section, []) for item in entry.get("filters", [])]
    return paths


def component_classes() -> list[str]:
    """The class paths of every component any of our jobs names (every registry algorithm), sorted.

    A site allows exactly these (``fedkper-monai allow``); read from the configs :func:`job_configs`
    generates, so a new component in a job is allowed once and nowhere restated.
    """
    from fedkper_monai.algorithm_registry import ALGORITHMS

    settings = [*STANDARD_JOBS.values(), *(JobSettings(name=name, algorithm=name) for name in ALGORITHMS)]
    return sorted({path for job in settings for config in job_configs(job)[1:] for path in _config_paths(config)})


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
            raise DataError(path, "missing: a job folder needs meta.json and app/config/config_fed_{server,client}.json")
    return tuple(copy.deepcopy(json.loads(path.read_text())) for path in paths)  # type: ignore[return-value]


def _medmnist_job(algorithm: str) -> JobSettings:
    """The paper's setting (the :class:`JobSettings` defaults) for one algorithm of the registry."""
    return JobSettings(name=f"{algorithm}_medmnist", algorithm=algorithm)


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
    **{job.name: job for job in map(_medmnist_job, ("fedkper", "fedavg", "fedprox", "fedntd"))},
    # 3D tissue segmentation on `fedkper-monai prepare mni152-demo` (one MNI152 template, not a cohort; issue 15).
    "fedkper_seg3d_demo": JobSettings(
        name="fedkper_seg3d_demo",
        network={"name": "unet", "spatial_dims": 3, "in_channels": 1, "num_classes": 3, "image_size": [32, 32, 32], "features": [8, 16, 32]},
        transforms="segmentation_3d",
        task="segmentation",
        site_settings={"augment": True, "optimizer": "adam", "task_args": {"supervised_loss": "dice_ce"}},
        num_rounds=5,
        sample_fraction=1.0,
        min_clients=2,
        local_epochs=2,
        batch_size=2,
        lr=0.003,
        lr_gamma=1.0,
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Write every standard job under the given folder (default ``jobs``)."""
    parser = argparse.ArgumentParser(
        prog="python -m fedkper_monai.flare.jobspec",
        description=f"Write the standard FLARE job folders ({', '.join(STANDARD_JOBS)}) under OUT.",
    )
    parser.add_argument("out", nargs="?", default="jobs", metavar="OUT", help="parent folder (default jobs)")
    target = Path(parser.parse_args(argv).out)
    for name, settings in STANDARD_JOBS.items():
        print(write_job(target / name, settings))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
