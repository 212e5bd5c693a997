"""What travels between our controller and our site executor, besides the weights: meta keys and the
conversion of a site's report into the train result FLARE sends to the server."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedkper_monai.flare.weights import to_numpy

__all__ = ["GLOBAL_VERSION_KEY", "SITE_METRICS_KEY", "RESUME_CHAIN_KEY", "resume_chain", "report_to_flmodel", "received_version", "is_initial",
           "round_shared", "ROUNDED_FIELD", "VERSIONS_KEY", "REFUSAL_HEADER", "software_versions", "version_mismatch"]

# Meta key set by the controller: how many aggregations produced the model in this task.
GLOBAL_VERSION_KEY = "global_version"
# Meta key of a train result's metrics. FLARE turns the metrics of a result that also carries weights into
# its pre-train validation figures (``MetaKey.INITIAL_METRICS``), so the site's train metrics travel here.
SITE_METRICS_KEY = "site_metrics"
# Meta key set by the controller of a resumed run: the ids of the stopped jobs it continues, newest first.
# A site takes over its state from the first of their folders that holds it (flare/resume.py).
RESUME_CHAIN_KEY = "resume_chain"
# Meta key of every task the controller sends and every train result a site sends: the package and FLARE versions
# the sender runs. A site refuses a task from a server of other versions, and the server an update from one.
VERSIONS_KEY = "software_versions"
# Header of a site's refusal reply: why it refused (the server records it as the site's failure reason; a
# return code alone says only that the task failed).
REFUSAL_HEADER = "fedkper_refusal"


# The shared figures ``share_decimals`` rounds: every accuracy and Dice (personalized, global-on-local,
# balanced, training) and every negative flip rate. Counts, sizes, seconds and the score are not rates.
ROUNDED_FIELD = re.compile(r"(_acc|_dice)$|^nfr_")


def round_shared(metrics: Mapping[str, Any], decimals: int | None) -> dict[str, Any]:
    """``metrics`` with every :data:`ROUNDED_FIELD` figure rounded to ``decimals`` (``None``: unchanged)."""
    if decimals is None:
        return dict(metrics)
    return {key: round(float(value), decimals) if ROUNDED_FIELD.search(key) and isinstance(value, (int, float)) and not isinstance(value, bool)
            else value for key, value in metrics.items()}


def report_to_flmodel(report: Any, received: Mapping[str, Any] | None = None, decimals: int | None = None) -> FLModel:
    """A :class:`~fedkper_monai.training.site.SiteReport` as the train result FLARE sends to the server.

    Args:
        report: the site's round.
        received: the received global weights (numpy): when given, the update is sent as ``DIFF``
            (trained - received), which FLARE's weight privacy filters need; else ``FULL``.
        decimals: ``share_decimals`` of the site (:func:`round_shared`).
    """
    params = to_numpy(report.upload)
    params_type = ParamsType.FULL
    if received is not None:
        params = {key: np.subtract(value, received[key], dtype=value.dtype) for key, value in params.items()}
        params_type = ParamsType.DIFF
    return FLModel(
        params_type=params_type,
        params=params,
        meta={"score": report.score, "num_samples": report.num_samples, SITE_METRICS_KEY: round_shared(report.metrics, decimals),
              VERSIONS_KEY: software_versions()},
    )


def is_initial(model: FLModel) -> bool:
    """Whether ``model`` is the controller's never-trained initial model (version 0: no aggregation yet)."""
    return (model.meta or {}).get(GLOBAL_VERSION_KEY) == 0


def received_version(model: FLModel) -> Any:
    """Identity of a received global model: the controller's version, else (another controller) the round.

    The pre-train validation and the train task of one round share it, so the model is evaluated once.
    """
    version = (model.meta or {}).get(GLOBAL_VERSION_KEY)
    return ["round", model.current_round] if version is None else version


def resume_chain(model: FLModel) -> list[str]:
    """The stopped jobs a task's run continues (newest first); empty for a run that never stopped."""
    chain = (model.meta or {}).get(RESUME_CHAIN_KEY) or []
    return [str(job_id) for job_id in chain] if isinstance(chain, list) else []


def software_versions() -> dict[str, str]:
    """The versions whose mix a federation must not have: this package's and FLARE's (both sides' weights,
    metrics and messages follow them)."""
    import nvflare

    from fedkper_monai import __version__

    return {"fedkper-monai": __version__, "nvflare": str(nvflare.__version__)}


def version_mismatch(theirs: Any, whose: str, ours_name: str) -> str | None:
    """None when ``theirs`` (a peer's :data:`VERSIONS_KEY` value) equals :func:`software_versions`; else a line
    naming both sides' versions (``whose``: the peer, e.g. "the server"; ``ours_name``: this side).

    A peer that names no versions (an older package, another controller) is not refused here: nothing says
    what it runs.
    """
    if not isinstance(theirs, Mapping):
        return None
    ours = software_versions()
    if all(str(theirs.get(name)) == version for name, version in ours.items()):
        return None

    def named(versions: Mapping[str, Any]) -> str:
        # A peer's value is shown, never trusted: cut to a short plain string.
        return " and ".join(f"{name} {str(versions.get(name, 'unknown'))[:40]!s}" for name in ours)

    return f"{ours_name} runs {named(ours)}, {whose} {named(theirs)}: install the same versions on both"
