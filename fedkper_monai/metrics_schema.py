"""The one schema of a run's ``metrics.jsonl``: its lines, their fields, and what becomes of each site field.

The server writer (:mod:`fedkper_monai.flare.metrics`) builds its lines from these tables and the report
(:mod:`fedkper_monai.report.runs`) checks types from them. Standard library only: the CLI, the report
and the schedule import it without torch or FLARE.

Lines, in the order the writer puts their fields:

- header: ``{"run": {...}}`` with :data:`HEADER_FIELDS` (first line);
- train line: ``round``, ``site``, ``task`` ("train"), :data:`SITE_TRAIN_FIELDS` (as the site sent them),
  then :data:`SERVER_TRAIN_FIELDS`; its global-on-local fields are of the model the site received;
- validate line: ``round``, ``site``, ``task`` ("validate"), :data:`VALIDATE_FIELDS`, of the global model
  made in its ``round``;
- round line: ``round`` (no ``site``), :data:`ROUND_FIELDS`.

Every field a site sends is written (a line above) or dropped by name in :data:`DROPPED_SITE_FIELDS`,
with the reason. To add a metric: compute it at the site, add it to one of these tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

__all__ = [
    "METRICS_FILE",
    "NUMBER",
    "NUMBER_LIST",
    "BOOLEAN",
    "UNCHECKED",
    "MetricField",
    "HEADER_FIELDS",
    "OPTIONAL_HEADER_FIELDS",
    "DENSE_SITE_FIELDS",
    "site_fields",
    "SITE_TRAIN_FIELDS",
    "SERVER_TRAIN_FIELDS",
    "VALIDATE_FIELDS",
    "FAILED_SITE_FIELDS",
    "ROUND_FIELDS",
    "DROPPED_SITE_FIELDS",
    "UnknownSiteFieldError",
    "names",
    "site_line_kinds",
    "round_line_kinds",
    "site_sort_key",
    "unknown_site_fields",
    "check_site_fields",
]

# The file the server writes into its run folder and the report looks for.
METRICS_FILE = "metrics.jsonl"

# Value kinds the report checks (a string where a number belongs would silently make a wrong mean).
NUMBER = "number"  # int or float (not bool), or null
NUMBER_LIST = "number list"  # a list of numbers or nulls, or null
BOOLEAN = "boolean"  # true, false or null
UNCHECKED = "unchecked"  # ids, names, site lists: the report reads them as they are


@dataclass(frozen=True)
class MetricField:
    """One field of a line: its name, the kind of value the report checks, and what it means."""

    name: str
    kind: str
    meaning: str


# The header line's fields (name -> meaning); the report reads them as they are, so they have no kinds.
HEADER_FIELDS: Mapping[str, str] = {
    "algorithm": "the algorithm's registry name",
    "job": "the job's name (its meta.json), e.g. fedkper_medmnist",
    "job_id": "FLARE's job id (simulate_job in the simulator)",
    "seed": "seed of site sampling (and, by the job, of partition and initialization)",
    "num_rounds": "FL rounds of the run",
    "num_sites": "number of sites connected",
    "sites": "the site names, sorted",
    "sample_fraction": "share of sites trained per round",
    "num_classes": "classes of the network (null when the persistor does not say)",
    "class_names": "class names of the global test list (null without one)",
    "network": "the network's name",
    "started": "UTC start time, ISO 8601",
}
# Written only when the run is not a classification run (classification headers keep their fields).
OPTIONAL_HEADER_FIELDS: Mapping[str, str] = {
    "task": "the task when not classification: 'segmentation' (site lines then carry *_dice fields, and the round "
    "line's *_acc fields hold mean foreground Dice)",
    "resumed": "present when the run was continued after a stop: [{round, job_id, missing_sites}], the first round "
    "each new job ran, its FLARE id and, only when some were not connected, the run's sites it ran without (sorted; "
    "omitted when none), who have no line from that round until the next entry (flare/resume.py); 'sites' stays the "
    "run's full list",
}

# Sent by a site in a train result and written into its train line, in this order.
SITE_TRAIN_FIELDS: tuple[MetricField, ...] = (
    MetricField("personalized_acc", NUMBER, "the site's local model on its local test split"),
    MetricField("personalized_balanced_acc", NUMBER, "the same, mean of per-class recalls"),
    MetricField("global_on_local_acc", NUMBER, "the received global model on the local test split"),
    MetricField("nfr_personalized", NUMBER, "negative flip rate of the local model since its previous evaluation"),
    MetricField("nfr_global_on_local", NUMBER, "negative flip rate of the global model on the local test split"),
    MetricField("train_acc", NUMBER, "the local model on its training split (the score's reliability); null unless the site shares diagnostics"),
    MetricField("score", NUMBER, "the site's FedKPer score (its aggregation weight before normalization)"),
    MetricField("num_samples", NUMBER, "training samples of the site (without its validation carve)"),
    MetricField("local_test_size", NUMBER, "samples of the local test split"),
    MetricField("validation_size", NUMBER, "samples of the site's own validation part (its val_fraction carve of the "
                "training list, or its datalist's 'validation' list) that pick best_personalized_model.pt; 0 without one"),
    MetricField("train_seconds", NUMBER, "wall time of the local training"),
    MetricField("negative_flips_personalized", NUMBER, "local test samples the local model got right last time and wrong now"),
    MetricField("positive_flips_personalized", NUMBER, "local test samples it got wrong (or never saw) last time and right now"),
    MetricField("unchanged_personalized", NUMBER, "local test samples whose correctness did not change"),
    # The initial, never-trained model is no previous evaluation: flips start with the first trained model.
    MetricField("negative_flips_global_on_local", NUMBER, "the received global model's negative flips on the local test split"),
    MetricField("positive_flips_global_on_local", NUMBER, "its positive flips there"),
    MetricField("unchanged_global_on_local", NUMBER, "samples whose correctness did not change"),
)
# Added by the server to each train line, after the site's fields.
SERVER_TRAIN_FIELDS: tuple[MetricField, ...] = (
    MetricField("weight", NUMBER, "the weight the aggregator really used (0 for a dropped update)"),
    MetricField("bytes_received", NUMBER, "bytes of the update the server received (measured by the server)"),
)
# A site line of a failed task (train or validate): ``round``, ``site``, ``task``, these fields (and ``weight`` 0
# for train); the site was dropped for that round (fedkper_monai.flare.failures writes it).
FAILED_SITE_FIELDS: tuple[MetricField, ...] = (
    MetricField("status", UNCHECKED, '"failed": the site did not answer the task (error, timeout or stopped)'),
    MetricField("reason", UNCHECKED, "why: the site's error code or the timeout it exceeded"),
)
# Sent by a site in a validate result (and inside a train result) and written into its validate line.
VALIDATE_FIELDS: tuple[MetricField, ...] = (
    MetricField("global_on_local_acc", NUMBER, "the round's global model on the local test split"),
    MetricField("nfr_global_on_local", NUMBER, "its negative flip rate on that split"),
    MetricField("local_test_size", NUMBER, "samples of the local test split"),
    MetricField("negative_flips_global_on_local", NUMBER, "its negative flips (counts) on that split"),
    MetricField("positive_flips_global_on_local", NUMBER, "its positive flips"),
    MetricField("unchanged_global_on_local", NUMBER, "samples whose correctness did not change"),
)
ROUND_FIELDS: tuple[MetricField, ...] = (
    MetricField("global_acc", NUMBER, "the round's global model on the global test set"),
    MetricField("global_balanced_acc", NUMBER, "the same, mean of per-class recalls"),
    MetricField("global_nfr", NUMBER, "negative flip rate of the global model on the global test set"),
    MetricField("global_per_class_forgetting", NUMBER_LIST, "per class: share of its samples that flipped to wrong"),
    MetricField("global_negative_flips", NUMBER, "global test samples the global model got right last round and wrong now"),
    MetricField("global_positive_flips", NUMBER, "global test samples it got wrong last round and right now"),
    MetricField("global_unchanged", NUMBER, "global test samples whose correctness did not change"),
    MetricField("unseen_site_acc", UNCHECKED, "held-out site -> the global model's accuracy on all its samples ({} without any)"),
    MetricField("mean_unseen_site_acc", NUMBER, "their mean (null without held-out sites)"),
    MetricField("bwt", NUMBER, "backward transfer (docs/design.md, Forgetting: NFR and BwT); null on rounds that are not a full validation"),
    MetricField("bwt_sites", NUMBER, "sites BwT averages: those with an exact baseline from an earlier round (0 when null)"),
    MetricField("mean_personalized_acc", NUMBER, "mean over every site trained so far of its latest personalized acc "
                "(a site not sampled, failed or missing from a continued job keeps its latest: its model is unchanged since)"),
    MetricField("worst_personalized_acc", NUMBER, "the lowest of those"),
    MetricField("balanced_personalized_acc", NUMBER, "mean of their class-balanced personalized accuracies"),
    MetricField("mean_nfr_personalized", NUMBER, "mean of their latest personalized NFR"),
    MetricField("mean_nfr_global_on_local", NUMBER, "mean over validating sites of the global-on-local NFR"),
    MetricField("sampled_sites", UNCHECKED, "sites sent the train task"),
    MetricField("aggregated_sites", UNCHECKED, "sites whose update went into the aggregate"),
    MetricField("dropped_sites", UNCHECKED, "site -> why its update was not aggregated"),
    MetricField("clipped_sites", UNCHECKED, "site -> factor c its update was clipped by, g + c (w - g), to the round's median-distance bound ({} when none)"),
    MetricField("refused_updates", UNCHECKED, "why results that were no site's one update were refused (a second result of a site, no site name)"),
    MetricField("single_site_round", BOOLEAN, "one site carried at least 99% of the aggregate"),
    MetricField("seconds", NUMBER, "wall time from this round's broadcast to the next one's (the last: to the end)"),
    MetricField("bytes_sent", NUMBER, "bytes of global weights the server sent for this round's model"),
    MetricField("bytes_received", NUMBER, "bytes of the updates the server received in this round"),
    MetricField("val_acc", NUMBER, "the round's global model on the server's validation list (global_val.json's "
                "'validation' entries; mean foreground Dice for segmentation, as global_acc); null without that file"),
    MetricField("best_val_round", NUMBER, "the round (0-based) whose global model has the highest val_acc so far, "
                "earliest on ties: the one kept as best_global_model.pt; null without validation"),
)

# A segmentation site (docs/design.md, Dense FedKPer) names its metric fields *_dice (mean foreground Dice) where a
# classification site names them *_acc; the train and validate lines take the name the site sent. The round
# line keeps its field names; in a segmentation run (header "task") they hold Dice.
DENSE_SITE_FIELDS: tuple[MetricField, ...] = (
    MetricField("personalized_dice", NUMBER, "segmentation: mean foreground Dice of the local model on its local test cases"),
    MetricField("personalized_balanced_dice", NUMBER, "the same, mean over foreground classes of their mean Dice"),
    MetricField("global_on_local_dice", NUMBER, "segmentation: the received global model's mean foreground Dice on the local test cases"),
    MetricField("train_dice", NUMBER, "the local model's mean foreground Dice on its training cases (the score's reliability); null unless the site shares diagnostics"),
)
_DENSE_NAMES = {f"{item.name.rsplit('_', 1)[0]}_acc": item for item in DENSE_SITE_FIELDS}


def site_fields(fields: tuple[MetricField, ...], metric: str) -> tuple[MetricField, ...]:
    """``fields`` as a site of a task with metric suffix ``metric`` sends them (``acc``: unchanged; ``dice``:
    ``personalized_acc`` -> ``personalized_dice``, ...)."""
    if metric == "acc":
        return fields
    if metric != "dice":
        raise ValueError(f"unknown metric suffix {metric!r}; known: acc, dice")
    return tuple(_DENSE_NAMES.get(item.name, item) for item in fields)


_STRATEGY_DIAGNOSTIC = "a loss-term mean of the local objective, for the site's own logs; no report compares it"
# Site fields that metrics.jsonl leaves out on purpose; the file keeps its fields as before (issue 9).
DROPPED_SITE_FIELDS: Mapping[str, str] = {
    "global_on_local_balanced_acc": "not in metrics.jsonl before the schema existed; written only when a report needs it",
    "global_on_local_balanced_dice": "as global_on_local_balanced_acc, for segmentation",
    "train_loss": "the site's mean training loss; logged in the site's TensorBoard, no report reads it",
    "lr": "follows from the job's lr, lr_gamma and the round; no report reads it",
    "strategy_ce": _STRATEGY_DIAGNOSTIC,
    "strategy_kl": _STRATEGY_DIAGNOSTIC,
    "strategy_beta": _STRATEGY_DIAGNOSTIC,
    "strategy_proximal": _STRATEGY_DIAGNOSTIC,
    "strategy_ntd": _STRATEGY_DIAGNOSTIC,
}


def names(fields: tuple[MetricField, ...]) -> tuple[str, ...]:
    """The field names of a table, in order."""
    return tuple(item.name for item in fields)


def site_line_kinds() -> dict[str, str]:
    """Name -> kind of every field of a site line (train or validate)."""
    return {item.name: item.kind for item in SITE_TRAIN_FIELDS + DENSE_SITE_FIELDS + SERVER_TRAIN_FIELDS + VALIDATE_FIELDS + FAILED_SITE_FIELDS}


def round_line_kinds() -> dict[str, str]:
    """Name -> kind of every field of a round line."""
    return {item.name: item.kind for item in ROUND_FIELDS}


# What a site's train result may carry: its train-line fields, bytes_received (the controller measures
# it and the learner reports the same figure), the global-on-local fields of its pre-train validation,
# and the dropped fields.
_SENT_BY_TRAIN = frozenset(names(SITE_TRAIN_FIELDS) + names(DENSE_SITE_FIELDS) + names(VALIDATE_FIELDS) + ("bytes_received",)) | set(DROPPED_SITE_FIELDS)
_SENT_BY_VALIDATE = frozenset(
    names(VALIDATE_FIELDS) + names(site_fields(VALIDATE_FIELDS, "dice")) + ("global_on_local_balanced_acc", "global_on_local_balanced_dice")
)


class UnknownSiteFieldError(ValueError):
    """A site sent a metric the schema neither writes nor drops by name."""


def unknown_site_fields(metrics: Mapping[str, object], task: str | None = None) -> list[str]:
    """The names in ``metrics`` that the schema does not know, sorted.

    Args:
        metrics: the metrics of one site result.
        task: ``"train"`` or ``"validate"`` to check against what that task sends; ``None`` accepts
            any field that some site task sends (a train result also carries the validation fields).
    """
    allowed = {"train": _SENT_BY_TRAIN, "validate": _SENT_BY_VALIDATE, None: _SENT_BY_TRAIN}.get(task)
    if allowed is None:
        raise ValueError(f"task must be 'train', 'validate' or None, got {task!r}")
    return sorted(name for name in metrics if name not in allowed)


def check_site_fields(metrics: Mapping[str, object], task: str | None = None) -> None:
    """Raise :class:`UnknownSiteFieldError` naming every field the schema does not know (tests call it).

    A new site metric must be added to a table here: written, or dropped by name with its reason.
    """
    unknown = unknown_site_fields(metrics, task)
    if unknown:
        raise UnknownSiteFieldError(
            f"site metrics {unknown} are neither written nor dropped by fedkper_monai.metrics_schema; "
            "add each to a line's fields or to DROPPED_SITE_FIELDS with its reason"
        )


def site_sort_key(site: str) -> tuple:
    """Sort ``site-2`` before ``site-10`` (in tables, plots and the held-out sites' order): digit runs compare
    as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", site) if part)
