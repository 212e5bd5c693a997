"""This participant's own MONAI bundle: its ``network_def`` and ``preprocessing``, federated with FedKPer.

Ground floor (no import of data/, training/ or bundle/; torch and MONAI load inside the calls): the site's
transforms (:mod:`fedkper_monai.transform_configs`), its network (:mod:`fedkper_monai.training.networks`) and
``export`` of a bundle-trained run (:mod:`fedkper_monai.bundle.export`) all read the bundle through here.

A job selects "this participant's bundle" by name only::

    learner / evaluator args:   "transforms": "bundle", "network": {"name": "bundle", "spatial_dims": 2, ...}
    persistor args:             "network": {"name": "bundle", ...}

and each participant's operator says where that bundle is, in its own environment::

    export FEDKPER_BUNDLE_ROOT=/opt/models/my_bundle    # holds configs/inference.json

Why not a path in the job: a bundle config is code (``_target_`` instantiates any class, ``$`` evaluates
any expression), and a job file comes from whoever submits the job. docs/design.md, Rules the code keeps: such code comes only
from the installed package or site-local configs. So a ``bundle_root`` (or any path) given in a network spec
is refused; only the operator's ``$FEDKPER_BUNDLE_ROOT`` is read, and it must be a local folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from fedkper_monai.errors import FedKPerError

__all__ = ["BUNDLE_NAME", "BUNDLE_ROOT_ENV", "local_bundle_root", "local_bundle_config", "build_bundle_network"]

#: The network name and transforms name that mean "the bundle at $FEDKPER_BUNDLE_ROOT".
BUNDLE_NAME = "bundle"
#: Environment variable, set by each participant's operator, naming the local bundle folder.
BUNDLE_ROOT_ENV = "FEDKPER_BUNDLE_ROOT"
#: The bundle config read for ``network_def`` and ``preprocessing`` (MONAI's convention for inference).
BUNDLE_CONFIG = Path("configs") / "inference.json"


def local_bundle_root() -> Path:
    """The operator's bundle folder (``$FEDKPER_BUNDLE_ROOT``).

    Raises:
        FedKPerError: unset, not a local folder, or without ``configs/inference.json``.
    """
    value = os.environ.get(BUNDLE_ROOT_ENV)
    if not value:
        raise FedKPerError(
            f"the job uses a MONAI bundle: set {BUNDLE_ROOT_ENV} in this participant's environment to the local "
            "bundle folder (the job itself never names a bundle path: a bundle config is code)"
        )
    if "://" in value:
        raise FedKPerError(f"{BUNDLE_ROOT_ENV}={value}: a bundle must be a local folder, not a URL")
    root = Path(value).expanduser()
    if not (root / BUNDLE_CONFIG).is_file():
        raise FedKPerError(f"{root}: not a MONAI bundle folder (no {BUNDLE_CONFIG}); set {BUNDLE_ROOT_ENV} to one")
    return root.resolve()


def local_bundle_config() -> Path:
    """The local bundle's ``configs/inference.json`` (a transform config for ``build_transforms``)."""
    return local_bundle_root() / BUNDLE_CONFIG


def build_bundle_network(
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    image_size: Sequence[int] | None = None,
    **job_values: Any,
) -> Any:
    """The local bundle's ``network_def``, checked against the job's task (channels, classes).

    Args:
        spatial_dims, in_channels, num_classes, image_size: the job's network spec (sized from the data);
            a probe batch of this shape must give logits ``(1, num_classes)``.
        job_values: anything else in the spec; a path there (``bundle_root`` ...) is refused.

    Raises:
        FedKPerError: a job-supplied bundle path, a bundle that cannot build ``network_def``, or a network
            that does not take this input or give this many classes.
    """
    import torch
    from monai.bundle import ConfigParser

    if job_values:
        raise FedKPerError(
            f"network spec {sorted(job_values)}: a job may not name a bundle's location (a bundle config is code); "
            f"the participant's operator sets {BUNDLE_ROOT_ENV}"
        )
    root = local_bundle_root()
    parser = ConfigParser()
    parser.read_config(str(root / BUNDLE_CONFIG))
    parser["bundle_root"] = str(root)
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as error:  # the bundle's config is the operator's data: say which file and why
        raise FedKPerError(f"{root / BUNDLE_CONFIG}: cannot build network_def: {error}") from None
    size = [int(s) for s in (image_size or [32] * int(spatial_dims))]
    probe = torch.zeros(1, int(in_channels), *size)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            logits = network(probe)
    except Exception as error:
        raise FedKPerError(f"{root / BUNDLE_CONFIG}: network_def does not take input {tuple(probe.shape)}: {error}") from None
    network.train(was_training)
    if tuple(logits.shape) != (1, int(num_classes)):
        raise FedKPerError(
            f"{root / BUNDLE_CONFIG}: network_def gives output {tuple(logits.shape)} for input {tuple(probe.shape)}, "
            f"the data has {num_classes} classes: set the bundle's number of outputs to {num_classes}"
        )
    return network
