"""The run's ``metrics.jsonl``: one header line, one line per site result, one line per round.

The fields of each line, and which site fields are left out and why, are in
:mod:`fedkper_monai.metrics_schema` (the report reads the same tables).

Order: the global model of round r is validated by all sites during round r + 1 (the sites sampled in
r + 1 evaluate it before they train, FLARE's pre-train validation; the others get a validate task in the
same broadcast) or, for the last round, in one final validate broadcast. So round r's validate lines and
round line follow round r + 1's broadcast, before round r + 1's train lines. ``seconds`` of round r runs
from its broadcast to round r + 1's (the last round: to the end of the run). The schedule itself is
:mod:`fedkper_monai.schedule`.

This module is plain Python (no FLARE, no torch at import): :class:`RunBook` keeps the cross-round state (each site's latest
personalized accuracy, its global-on-local accuracy right after it was last sampled) and builds the lines.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from fedkper_monai import metrics_schema as schema
from fedkper_monai.schedule import BestSelection, RoundRecord

__all__ = ["RunBook", "MetricsFile", "SITE_TRAIN_FIELDS", "ROUND_FIELDS"]

# Field names, in the order they are written (the tables, with meanings, are in metrics_schema).
SITE_TRAIN_FIELDS = schema.names(schema.SITE_TRAIN_FIELDS)
VALIDATE_FIELDS = schema.names(schema.VALIDATE_FIELDS)
ROUND_FIELDS = schema.names(schema.ROUND_FIELDS)
_LOG = logging.getLogger(__name__)
# An aggregate is "carried by one site" when one weight is at least this share.
_SINGLE_SITE_SHARE = 0.99


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: missing or non-finite numbers are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


class MetricsFile:
    """Append-only JSON-lines file; each line is written with one ``write`` call and flushed."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: Mapping[str, Any]) -> None:
        clean = {key: _finite_or_none(value) for key, value in record.items()}
        line = json.dumps(clean, sort_keys=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def _metric_of(metrics: Mapping[str, Any]) -> str:
    """The metric suffix a site's fields carry: ``dice`` from a segmentation site, else ``acc``."""
    return "dice" if "global_on_local_dice" in metrics or "personalized_dice" in metrics else "acc"


class RunBook:
    """Cross-round bookkeeping for the round lines (personalized summary and BwT).

    - ``personalized``: each site's latest personalized accuracies (from its last train task).
    - ``baselines``: each site's BwT baseline, its global-on-local accuracy of the global model made in the
      round it was last sampled (docs/design.md, Forgetting: NFR and BwT; exact: the schedule has every sampled site evaluate
      that model in the next broadcast, also between full validations).
    - ``selection``: the round whose global model scored best on the server's validation list so far
      (``best_val_round``; the controller keeps that model as ``best_global_model.pt``).

    A site field the schema does not know is never written: it is logged once and dropped, or, with
    ``strict`` (tests), raises :class:`~fedkper_monai.metrics_schema.UnknownSiteFieldError`.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = bool(strict)
        self.personalized: dict[str, dict[str, float]] = {}
        self.baselines: dict[str, float] = {}
        self.selection = BestSelection()
        self._reported_unknown: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        """The cross-round state, as JSON (a resumed run continues it)."""
        return {"personalized": self.personalized, "baselines": self.baselines, "selection": self.selection.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.personalized = {site: dict(values) for site, values in (state.get("personalized") or {}).items()}
        self.baselines = {site: float(value) for site, value in (state.get("baselines") or {}).items()}
        self.selection.load_state_dict(state.get("selection"))

    def _check_fields(self, site: str, metrics: Mapping[str, Any], task: str | None) -> None:
        if self.strict:
            schema.check_site_fields(metrics, task)
            return
        unknown = [name for name in schema.unknown_site_fields(metrics, task) if name not in self._reported_unknown]
        if unknown:
            self._reported_unknown.update(unknown)
            _LOG.warning("%s sent metrics the schema does not know, not written: %s", site, unknown)

    def site_train_line(self, round_index: int, site: str, metrics: Mapping[str, Any], weight: float) -> dict[str, Any]:
        """The metrics line of one site's train result; also records its personalized accuracy (or Dice)."""
        self._check_fields(site, metrics, "train")
        metric = _metric_of(metrics)
        line: dict[str, Any] = {"round": round_index, "site": site, "task": "train"}
        line.update({field: metrics.get(field) for field in schema.names(schema.site_fields(schema.SITE_TRAIN_FIELDS, metric))})
        line["weight"] = float(weight)
        line["bytes_received"] = metrics.get("bytes_received")
        if metrics.get(f"personalized_{metric}") is not None:
            self.personalized[site] = {
                "acc": float(metrics[f"personalized_{metric}"]),
                "balanced": float(metrics.get(f"personalized_balanced_{metric}", float("nan"))),
                "nfr": float(metrics.get("nfr_personalized", float("nan"))),
            }
        return line

    def site_validate_line(self, round_index: int, site: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The metrics line of one site's global-on-local validation.

        ``metrics`` is a validate result or a train result (which holds its pre-train validation), so
        any field a site task sends is accepted here.
        """
        self._check_fields(site, metrics, None)
        line: dict[str, Any] = {"round": round_index, "site": site, "task": "validate"}
        line.update({field: metrics.get(field) for field in schema.names(schema.site_fields(schema.VALIDATE_FIELDS, _metric_of(metrics)))})
        return line

    def backward_transfer(self, current: Mapping[str, float], sampled: Iterable[str], full: bool) -> tuple[float | None, int]:
        """BwT of a round's global model (docs/design.md, Forgetting: NFR and BwT) and the number of sites it averages.

        Over every site with a baseline from an earlier round (a re-sampled site against its previous
        baseline; sites never sampled left out): the mean of its accuracy in ``current`` minus its baseline.
        None (and 0 sites) on a round that is not a ``full`` validation or without baselines. Then the
        round's ``sampled`` sites take their ``current`` accuracy as their new baseline; one without a
        current figure (it failed) loses its baseline rather than keep an inexact one.

        Args:
            current: site -> global-on-local accuracy of the round's global model.
            sampled: the sites trained in the round.
            full: whether every site validated the round's model.
        """
        references = {site: acc for site, acc in self.baselines.items() if site in current}
        bwt = None
        if full and references:
            # Imported here: the algorithm package loads torch, and the CLI imports this module for its names.
            from fedkper_monai.algorithm import backward_transfer

            bwt = backward_transfer(dict(current), references)
        for site in sampled:
            if site in current:
                self.baselines[site] = float(current[site])
            else:
                self.baselines.pop(site, None)
        return bwt, len(references) if bwt is not None else 0

    def close_round(
        self, record: RoundRecord, evaluations: Mapping[str, Mapping[str, Any]], seconds: float
    ) -> list[dict[str, Any]]:
        """The validate lines and the round line of ``record``, once its global model has been evaluated.

        Args:
            record: the round, as kept since its aggregation.
            evaluations: per site, the global-on-local metrics of the round's global model (a validate
                result, or the pre-train validation inside a next-round train result): every site's on a
                full validation, else the round's sampled sites' (their BwT baselines).
            seconds: the round's wall time.

        Returns:
            One validate line per evaluated site (sorted), then the round line (last). Its ``best_val_round``
            equals its ``round`` exactly when this round's global model is a new best on validation.
        """
        lines = [self.site_validate_line(record.round, site, evaluations[site]) for site in sorted(evaluations)]
        current = {
            line["site"]: float(value)
            for line in lines
            for value in (line.get("global_on_local_acc", line.get("global_on_local_dice")),)
            if value is not None
        }
        bwt, bwt_sites = self.backward_transfer(current, record.sampled, full=record.validate)
        val_acc = (record.global_eval or {}).get("val_accuracy")
        self.selection.update(record.round, val_acc)
        lines.append(
            self.round_line(
                record.round,
                global_eval=record.global_eval,
                bwt=bwt,
                bwt_sites=bwt_sites,
                site_nfr_global_on_local=[float(line["nfr_global_on_local"]) for line in lines if line["nfr_global_on_local"] is not None],
                sampled=record.sampled,
                weights=record.weights,
                dropped=record.dropped,
                clipped=record.clipped,
                refused=record.refused,
                seconds=seconds,
                bytes_sent=record.bytes_sent,
                bytes_received=record.bytes_received,
                val_acc=val_acc,
                best_val_round=self.selection.round,
            )
        )
        return lines

    def round_line(
        self,
        round_index: int,
        *,
        global_eval: Mapping[str, Any] | None,
        bwt: float | None,
        bwt_sites: int,
        site_nfr_global_on_local: Iterable[float],
        sampled: list[str],
        weights: Mapping[str, float],
        dropped: Mapping[str, str],
        seconds: float,
        bytes_sent: int,
        bytes_received: int,
        clipped: Mapping[str, float] | None = None,
        refused: Iterable[str] = (),
        val_acc: float | None = None,
        best_val_round: int | None = None,
    ) -> dict[str, Any]:
        """The round's summary line; personalized figures are over every site trained so far."""
        accs = [entry["acc"] for entry in self.personalized.values()]
        # Sorted: the aggregator lists sites in the order their updates arrived, which FLARE does not fix.
        aggregated = sorted(site for site in weights if site not in dropped)
        top_share = max((weights[s] for s in aggregated), default=0.0)
        global_eval = global_eval or {}
        return {
            "round": round_index,
            "global_acc": global_eval.get("accuracy"),
            "global_balanced_acc": global_eval.get("balanced_accuracy"),
            "global_nfr": global_eval.get("nfr"),
            "global_per_class_forgetting": global_eval.get("per_class_forgetting"),
            "global_negative_flips": global_eval.get("negative_flips"),
            "global_positive_flips": global_eval.get("positive_flips"),
            "global_unchanged": global_eval.get("unchanged"),
            "unseen_site_acc": dict(global_eval.get("unseen_site_acc") or {}),
            "mean_unseen_site_acc": _mean((global_eval.get("unseen_site_acc") or {}).values()),
            "bwt": bwt,
            "bwt_sites": bwt_sites,
            "mean_personalized_acc": _mean(accs),
            "worst_personalized_acc": min(accs) if accs else None,
            "balanced_personalized_acc": _mean(e["balanced"] for e in self.personalized.values()),
            "mean_nfr_personalized": _mean(e["nfr"] for e in self.personalized.values()),
            "mean_nfr_global_on_local": _mean(site_nfr_global_on_local),
            "sampled_sites": list(sampled),
            "aggregated_sites": aggregated,
            "dropped_sites": dict(dropped),
            "clipped_sites": dict(clipped or {}),
            "refused_updates": list(refused),
            "single_site_round": bool(aggregated) and top_share >= _SINGLE_SITE_SHARE,
            "seconds": seconds,
            "bytes_sent": int(bytes_sent),
            "bytes_received": int(bytes_received),
            "val_acc": val_acc,
            "best_val_round": best_val_round,
        }
