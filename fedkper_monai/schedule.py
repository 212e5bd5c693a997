"""The server's round schedule, without FLARE or torch: who trains, who validates, what a round records.

Round r is one broadcast of the global model made in round r - 1: ``train`` to a seeded sample of sites
and, when that model is due for validation, ``validate`` to all the others (the sampled sites evaluate
it before they train, so every site reports on it in the same broadcast). After the last round, one
final broadcast lets every site validate the last model. :class:`RoundSchedule` answers each of these
questions as plain calls; :class:`fedkper_monai.flare.controller.FedKPerController` sends the tasks, and
:class:`fedkper_monai.flare.metrics.RunBook` turns a :class:`RoundRecord` into the round's lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["sample_sites", "validation_due", "Broadcast", "RoundRecord", "RoundSchedule", "BestSelection"]


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


def validation_due(round_index: int, num_rounds: int, validate_every: int) -> bool:
    """Whether all sites validate the global model made in ``round_index``: every ``validate_every``
    rounds and after the last round (never when ``validate_every`` is 0)."""
    if not validate_every:
        return False
    return (round_index + 1) % validate_every == 0 or round_index == num_rounds - 1


@dataclass(frozen=True)
class Broadcast:
    """One round's broadcast: ``sampled`` sites train, ``validators`` validate the same model."""

    round: int
    sampled: list[str]
    validators: list[str]


@dataclass
class RoundRecord:
    """What the server keeps of round ``round`` until its global model has been validated by the sites.

    ``validate``: whether all sites validate this round's global model (every ``validate_every`` rounds
    and the last); ``global_eval``: the server's evaluation of it on the global test list, when done;
    ``clipped``: site -> the factor its update was clipped by; ``refused``: why results that were no site's one
    update (a second result, no site name) were refused.
    """

    round: int
    started: float
    sampled: list[str]
    weights: dict[str, float]
    dropped: dict[str, str]
    bytes_sent: int
    bytes_received: int
    validate: bool
    global_eval: dict[str, Any] | None = field(default=None)
    clipped: dict[str, float] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


class RoundSchedule:
    """The schedule of one run over ``sites``.

    Args:
        sites: the site names (kept sorted): those connected. A run continued without a site of the stopped
            run (flare/resume.py) samples among the sites present, with the same seed.
        num_rounds: FL rounds.
        sample_fraction: share of sites trained per round (at least ``min_sites_per_round``).
        seed: seed of the per-round site sampling.
        min_sites_per_round: lower bound of the sample size.
        validate_every: rounds between validations of all sites (0: none but the last round's).
    """

    def __init__(
        self,
        sites: Sequence[str],
        num_rounds: int,
        sample_fraction: float,
        seed: int,
        min_sites_per_round: int = 1,
        validate_every: int = 1,
    ) -> None:
        self.sites = sorted(sites)
        self.num_rounds = int(num_rounds)
        self.sample_fraction = float(sample_fraction)
        self.seed = int(seed)
        self.min_sites_per_round = int(min_sites_per_round)
        self.validate_every = int(validate_every)

    def broadcast(self, round_index: int, previous: RoundRecord | None) -> Broadcast:
        """Round ``round_index``'s targets; ``previous`` is the round whose model is being sent (None at first)."""
        sampled = sample_sites(self.sites, self.sample_fraction, self.seed, round_index, self.min_sites_per_round)
        if previous is None:
            return Broadcast(round=round_index, sampled=sampled, validators=[])
        # A full validation asks every site; otherwise the previous round's sampled sites still evaluate the
        # model their update went into, which is their exact BwT baseline (docs/design.md, Forgetting: NFR and BwT).
        validators = [site for site in self.asked(previous) if site not in sampled]
        return Broadcast(round=round_index, sampled=sampled, validators=validators)

    def final_broadcast(self, last: RoundRecord, payload_bytes: int) -> list[str]:
        """The sites that validate the last round's model in the final broadcast; its bytes count to ``last``."""
        validators = self.asked(last)
        last.bytes_sent += payload_bytes * len(validators)
        return validators

    def asked(self, record: RoundRecord) -> list[str]:
        """The sites whose evaluation of ``record``'s model the server needs: all on a full validation, else
        its sampled sites (their BwT baselines), none when validation is off (``validate_every`` 0).

        Only sites of this schedule: the record a continued run takes over from a stopped one may name a site
        that is not connected now (flare/resume.py); it is never sent a task."""
        if record.validate:
            return list(self.sites)
        return [site for site in record.sampled if site in self.sites] if self.validate_every else []

    def evaluations(
        self,
        previous: RoundRecord,
        validations: Mapping[str, Mapping[str, Any]],
        train_metrics: Mapping[str, Mapping[str, Any]],
    ) -> dict[str, Mapping[str, Any]]:
        """Per site, its global-on-local metrics of ``previous``'s model: every site's on a full validation,
        else those of ``previous``'s sampled sites (their BwT baselines).

        The sampled sites evaluated the received model before training: their train metrics hold it.
        """
        asked = set(self.asked(previous))
        return {site: metrics for site, metrics in {**validations, **train_metrics}.items() if site in asked}

    def record(
        self,
        broadcast: Broadcast,
        started: float,
        weights: Mapping[str, float],
        dropped: Mapping[str, str],
        payload_bytes: int,
        train_metrics: Mapping[str, Mapping[str, Any]],
    ) -> RoundRecord:
        """The round once aggregated.

        Args:
            broadcast: the round's targets.
            started: when its broadcast began (``time.perf_counter``).
            weights: site -> weight the aggregator used; dropped: site -> why it was not aggregated.
                A sampled site without a result is added to both (weight 0, "no result").
            payload_bytes: bytes of the global weights sent to one site.
            train_metrics: per site, its train result's metrics with the server's ``bytes_received``.
        """
        weights, dropped = dict(weights), dict(dropped)
        for site in broadcast.sampled:
            if site not in train_metrics:
                dropped.setdefault(site, "no result")
                weights.setdefault(site, 0.0)
        return RoundRecord(
            round=broadcast.round,
            started=started,
            sampled=broadcast.sampled,
            weights=weights,
            dropped=dropped,
            bytes_sent=payload_bytes * (len(broadcast.sampled) + len(broadcast.validators)),
            bytes_received=sum(metrics["bytes_received"] for metrics in train_metrics.values()),
            validate=validation_due(broadcast.round, self.num_rounds, self.validate_every),
        )


@dataclass
class BestSelection:
    """Model selection on a validation list: the round whose model scored highest so far (earliest on ties).

    MONAI's ``CheckpointSaver`` with a key metric, without ignite: the server feeds each round's validation
    accuracy (mean foreground Dice for segmentation) of the global model, a site its personalized model's on
    its validation carve. ``None`` scores (no validation list, a failed evaluation) never select a round.
    The state is two numbers, kept in the checkpoint, so a resumed run continues the same selection.
    """

    round: int | None = None
    score: float | None = None

    def update(self, round_index: int, score: float | None) -> bool:
        """Record ``round_index``'s score; True when it is a new best (its model is then the one to keep)."""
        if score is None or not math.isfinite(float(score)):
            return False
        if self.score is not None and float(score) <= self.score:
            return False  # a tie keeps the earlier round
        self.round, self.score = int(round_index), float(score)
        return True

    def state_dict(self) -> dict[str, Any]:
        """The selection as JSON."""
        return {"round": self.round, "score": self.score}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore what :meth:`state_dict` returned (None or {}: nothing selected yet)."""
        state = state or {}
        self.round = None if state.get("round") is None else int(state["round"])
        self.score = None if state.get("score") is None else float(state["score"])
