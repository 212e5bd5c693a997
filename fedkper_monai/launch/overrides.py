"""Job overrides: the settings a user changes per run without editing the job folder, in one place.

``simulate``, ``export``, ``poc run``, ``deploy lab``, ``compare`` and :class:`~fedkper_monai.launch.recipe.FedKPerRecipe`
all take the same overrides; this module declares their command-line options, checks their ranges, builds
:class:`JobOverrides` from parsed arguments and applies them to a job's configs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.jobspec import controller_args, job_component, load_job, site_args
from fedkper_monai.launch.checks import check_job_fields, check_ranges

__all__ = ["JobOverrides", "add_override_options", "check_overrides", "overrides_from_args", "configure_job",
           "apply_overrides"]


@dataclass
class JobOverrides:
    """Settings a user changes per run without editing the job folder (``None`` keeps the job's value)."""

    rounds: int | None = None
    data_root: str | None = None
    sample_fraction: float | None = None
    local_epochs: int | None = None
    seed: int | None = None
    validate_every: int | None = None


def _network_from_data(source: Path, network: dict, transforms: str) -> dict:
    """The job's network spec with classes, size and input channels taken from prepared data.

    ``source`` is a datalist JSON, or a folder made by ``fedkper-monai prepare`` (its ``site-1.json``).
    """
    from fedkper_monai.data import build_transforms, load_datalist

    first = source / "site-1.json" if source.is_dir() else source
    if not first.exists():
        raise FedKPerError(f"{first}: not found; give a datalist or a folder made by `fedkper-monai prepare`")
    datalist = load_datalist(first)
    updated = dict(network)
    updated["num_classes"] = datalist.num_classes
    updated["spatial_dims"] = datalist.spatial_dims
    if datalist.image_size:
        updated["image_size"] = list(datalist.image_size)
    # The channels a site's pipeline gives: the datalist's conversion (prepare --channels) when it records one.
    settings = {"channels": datalist.channels} if datalist.channels else None
    transform = build_transforms(transforms, image_size=updated.get("image_size"), augment=False, overrides=settings)
    sample = transform(dict(datalist.training[0] if datalist.training else datalist.test[0]))
    updated["in_channels"] = int(sample["image"].shape[0])
    return updated


def configure_job(job: str | Path, overrides: JobOverrides, *, network_from: str | Path | None = None) -> tuple[dict, dict, dict]:
    """The three configs of ``job`` with ``overrides`` applied (the job folder is not modified).

    ``overrides.data_root`` is written into the site executor's and evaluator's args (simulation: one machine);
    for real sites leave it unset, so each site reads its own ``$FEDKPER_DATA_ROOT``. Either data root,
    or ``network_from`` (a datalist or a prepared folder), sets the network's classes, size and channels.

    Raises:
        DataError: a field the sites or the server would refuse (:func:`~fedkper_monai.launch.checks.check_job_fields`),
            before anything reads the job.
    """
    meta, server, client = load_job(Path(job))
    check_job_fields(job, server, client)
    return apply_overrides(meta, server, client, overrides, network_from=network_from)


def apply_overrides(meta: dict, server: dict, client: dict, overrides: JobOverrides, *,
                    network_from: str | Path | None = None) -> tuple[dict, dict, dict]:
    """A job's three configs with ``overrides`` applied (changed in place and returned); see :func:`configure_job`."""
    controller = controller_args(server)
    learner = site_args(client)
    evaluator = job_component(server, "global_evaluator")["args"]
    persistor = job_component(server, "persistor")["args"]
    if overrides.rounds is not None:
        controller["num_rounds"] = overrides.rounds
    if overrides.sample_fraction is not None:
        controller["sample_fraction"] = overrides.sample_fraction
    if overrides.local_epochs is not None:
        learner["local_epochs"] = overrides.local_epochs
    if overrides.validate_every is not None:
        controller["validate_every"] = overrides.validate_every
    if overrides.seed is not None:
        for args in (controller, learner, persistor):
            args["seed"] = overrides.seed
    if overrides.data_root is not None:
        root = Path(overrides.data_root).resolve()
        for args in (learner, evaluator):
            args["data_root"] = str(root)
            args["demo"] = False
        network_from = network_from or root
    if network_from is not None:
        network = _network_from_data(Path(network_from), learner["network"], learner.get("transforms", "classification_2d"))
        for args in (learner, evaluator, persistor):
            args["network"] = network
    return meta, server, client


def add_override_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    """The job settings a command may override (fields of :class:`JobOverrides`); ``seed=False`` for a command
    that takes its seeds otherwise (``compare --seeds``)."""
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--sample-fraction", type=float, help="override the share of sites trained per round")
    parser.add_argument("--local-epochs", type=int, help="override local epochs")
    if seed:
        parser.add_argument("--seed", type=int, help="override the seed (sampling, initialization, shuffling)")
    parser.add_argument(
        "--validate-every", type=int, help="rounds between global-on-local validations of all sites (BwT); 0 disables"
    )


def check_overrides(args: argparse.Namespace) -> None:
    """The ranges of the override options in ``args`` (one line naming the option; absent options pass)."""
    check_ranges(rounds=args.rounds, sample_fraction=args.sample_fraction, local_epochs=args.local_epochs,
                 validate_every=args.validate_every, seed=getattr(args, "seed", None))


def overrides_from_args(args: argparse.Namespace, *, data_root: str | Path | None = None) -> JobOverrides:
    """The :class:`JobOverrides` of parsed override options; ``data_root`` only where the run is on one machine."""
    return JobOverrides(
        rounds=args.rounds,
        data_root=None if data_root is None else str(data_root),
        sample_fraction=args.sample_fraction,
        local_epochs=args.local_epochs,
        seed=getattr(args, "seed", None),
        validate_every=args.validate_every,
    )
