"""What a finished FedKPer run left on disk: its models, their network spec, transforms and class names.

A run folder is the simulator workspace (``fedkper-monai simulate JOB -w RUN``)::

    RUN/server/<job>/metrics.jsonl                 header: algorithm, classes, network name, ...
    RUN/server/<job>/global_model.pt               the latest global model (a state dict)
    RUN/server/<job>/best_global_model.pt          the one best on global_val.json (only with that file)
    RUN/server/<job>/app_server/config/config_fed_server.json   persistor args: the network spec
    RUN/site-N/<job>/personalized_model.pt         site-N's personalized model (a state dict)
    RUN/site-N/<job>/best_personalized_model.pt    the one best on site-N's own validation part (only with one)
    RUN/site-N/<job>/app_site-N/config/config_fed_client.json   learner args: network spec, transforms

The server's job folder itself (the one holding ``metrics.jsonl``) is accepted as ``RUN`` for the global model;
which ``metrics.jsonl`` is the run's is :func:`fedkper_monai.run_files.server_job_dir`'s rule (exactly one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkper_monai.errors import FedKPerError
from fedkper_monai.metrics_schema import METRICS_FILE
from fedkper_monai.run_files import server_job_dir

__all__ = ["ModelSource", "locate_model", "read_run_header", "site_job_dir", "last_train_line"]

GLOBAL_MODEL_FILE = "global_model.pt"
PERSONALIZED_MODEL_FILE = "personalized_model.pt"  # training.site.CHECKPOINT_FILE (not imported: that pulls torch)
BEST_GLOBAL_MODEL_FILE = "best_global_model.pt"  # flare.persistor.BEST_MODEL_FILE
BEST_PERSONALIZED_MODEL_FILE = "best_personalized_model.pt"  # training.site_state.BEST_MODEL_FILE
# Why a run may have no best model: what selects one and how to get it.
_NO_BEST = {
    "global": "the server selects one only when the data root holds global_val.json (written by `fedkper-monai prepare`)",
    "personalized": "a site selects one only with a validation part: its setting val_fraction > 0 or a 'validation' "
    "list in its own datalist",
}
DEFAULT_TRANSFORMS = "classification_2d"  # training.site.SiteConfig.transforms


@dataclass(frozen=True)
class ModelSource:
    """One model of a run and everything needed to rebuild and feed it.

    Attributes:
        role: ``"global"`` or ``"personalized"``.
        site: the site of a personalized model, else None.
        weights_path: the state dict file.
        network: the ``build_network`` spec (name, spatial_dims, in_channels, num_classes, image_size).
        transforms: the transform config name or path the model was trained with.
        class_names: one name per output, index = class.
        run: the run's ``metrics.jsonl`` header (algorithm, seed, rounds, sites, ...).
        run_dir: the run folder.
        best: the model best on validation (``best_*_model.pt``) rather than the latest.
    """

    role: str
    site: str | None
    weights_path: Path
    network: dict[str, Any]
    transforms: str
    class_names: list[str]
    run: dict[str, Any] = field(default_factory=dict)
    run_dir: Path = Path(".")
    best: bool = False


def site_job_dir(run_dir: str | os.PathLike, site: str) -> Path:
    """The job folder of ``site`` in a run folder (where its personalized model is kept)."""
    run = Path(run_dir)
    found = sorted(path.parent for path in (run / site).glob(f"*/{PERSONALIZED_MODEL_FILE}"))
    if not found:
        sites = sorted(p.parent.parent.name for p in run.glob(f"*/*/{PERSONALIZED_MODEL_FILE}"))
        raise FedKPerError(
            f"{run}: no personalized model of site {site!r} (looked for {run / site}/<job>/{PERSONALIZED_MODEL_FILE}); "
            f"sites with one: {', '.join(sites) or 'none'}"
        )
    return found[0]


def read_run_header(job_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``run`` header (first line) of a server job folder's ``metrics.jsonl``."""
    path = Path(job_dir) / METRICS_FILE
    try:
        with path.open() as handle:
            first = json.loads(handle.readline() or "{}")
    except (OSError, json.JSONDecodeError) as error:
        raise FedKPerError(f"{path}: cannot read the run header: {error}") from None
    if "run" not in first:
        raise FedKPerError(f"{path}: first line has no 'run' header")
    return dict(first["run"])


def last_train_line(run_dir: str | os.PathLike, site: str) -> dict[str, Any]:
    """The last ``train`` line that ``site`` reported in the run's ``metrics.jsonl``."""
    path = server_job_dir(run_dir) / METRICS_FILE
    last = None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("site") == site and record.get("task") == "train":
            last = record
    if last is None:
        raise FedKPerError(f"{path}: site {site!r} never trained")
    return last


def _component_args(config_path: Path, class_name: str) -> dict[str, Any] | None:
    """The ``args`` of the first component, workflow or executor whose ``path`` ends with ``class_name``."""
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FedKPerError(f"{config_path}: cannot read the job config: {error}") from None
    entries = [*config.get("components", []), *config.get("workflows", [])]
    entries += [entry.get("executor", {}) for entry in config.get("executors", [])]
    for component in entries:
        if str(component.get("path", "")).endswith(class_name):
            return dict(component.get("args") or {})
    return None


def _first(pattern: str, folder: Path) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise FedKPerError(f"{folder}: no {pattern} (the job config the run was started with)")
    return found[0]


def _class_names(header: dict[str, Any], num_classes: int, source: Path) -> list[str]:
    names = header.get("class_names") or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise FedKPerError(f"{source}: {len(names)} class names for a network of {num_classes} outputs")
    return [str(name) for name in names]


def locate_model(run_dir: str | os.PathLike, site: str | None = None, best: bool = False) -> ModelSource:
    """The global model of a run (``site=None``) or one site's personalized model: the latest, or with ``best``
    the one that scored best on validation (``best_global_model.pt``: the server's global_val.json;
    ``best_personalized_model.pt``: the site's own validation part of its training data).

    Raises:
        FedKPerError: the run folder, the model file or its job config is missing (naming what was looked for);
            with ``best``, a run that selected no best model (naming the file and what would have selected one).
    """
    server_dir = server_job_dir(run_dir)
    header = read_run_header(server_dir)
    run = Path(run_dir)
    if site is None:
        weights = server_dir / (BEST_GLOBAL_MODEL_FILE if best else GLOBAL_MODEL_FILE)
        config_path = _first("app_*/config/config_fed_server.json", server_dir)
        network = _component_args(config_path, "NetworkPersistor") or {}
        evaluator = _component_args(config_path, "GlobalEvaluator") or {}
        transforms = evaluator.get("transforms") or DEFAULT_TRANSFORMS
        role = "global"
    else:
        job_dir = site_job_dir(run, site)
        weights = job_dir / (BEST_PERSONALIZED_MODEL_FILE if best else PERSONALIZED_MODEL_FILE)
        config_path = _first("app_*/config/config_fed_client.json", job_dir)
        # The site executor's args; runs made before it name the former FedKPerLearner component.
        learner = _component_args(config_path, "FedKPerExecutor") or _component_args(config_path, "FedKPerLearner") or {}
        network = learner
        transforms = learner.get("transforms") or DEFAULT_TRANSFORMS
        role = "personalized"
    spec = dict(network.get("network") or {})
    if not spec.get("name"):
        raise FedKPerError(f"{config_path}: no network spec (args.network) in the job config")
    if not weights.is_file():
        if best:
            raise FedKPerError(f"{weights}: no best model in this run: {_NO_BEST[role]}")
        raise FedKPerError(f"{weights}: model file not found")
    return ModelSource(
        role=role,
        site=site,
        weights_path=weights,
        network=spec,
        transforms=str(transforms),
        class_names=_class_names(header, int(spec.get("num_classes", 0)), config_path),
        run=header,
        run_dir=run,
        best=best,
    )
