"""FedKPer's server aggregation as a FLARE ``ModelAggregator``: validate, weight by score, average in a stream."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator

from fedkper_monai.algorithm import WeightedAverager, aggregation_weights, scores_usable

__all__ = ["FedKPerAggregator", "SCORE_KEY", "NUM_SAMPLES_KEY", "validate_update"]

SCORE_KEY = "score"
NUM_SAMPLES_KEY = "num_samples"
_WEIGHTINGS = ("score", "samples")
# accuracy 1 on a perfectly class-balanced site scores 1 * (1 + eps): allow that eps (fedkper_score's default).
_MAX_SCORE = 1.0 + 1e-6


def validate_update(
    params: Mapping[str, Any] | None,
    score: Any,
    num_samples: Any,
    reference: Mapping[str, tuple[int, ...]] | None,
) -> str | None:
    """Check one site update against DESIGN §4; returns the reason to drop it, or ``None`` when it is valid.

    A NaN score is valid here: it makes the whole round fall back to sample-count weights (DESIGN §1).

    Args:
        params: the site's weights (name -> array).
        score: the site's FedKPer score, expected in [0, 1] or NaN.
        num_samples: the site's number of training samples, expected a positive integer.
        reference: expected name -> shape, or None to accept any keys (the first update then defines them).
    """
    return _weights_problem(params, reference) or _scalars_problem(score, num_samples)


def _weights_problem(params: Mapping[str, Any] | None, reference: Mapping[str, tuple[int, ...]] | None) -> str | None:
    """Why the weights of an update are unusable (keys, shapes, non-finite values), or ``None``."""
    if not params:
        return "no weights in the update"
    if reference is not None:
        missing = sorted(set(reference) - set(params))
        extra = sorted(set(params) - set(reference))
        if missing or extra:
            return f"unexpected keys: missing {missing[:5]}, extra {extra[:5]}"
    for name, value in params.items():
        array = np.asarray(value)
        if reference is not None and tuple(array.shape) != tuple(reference[name]):
            return f"{name}: shape {tuple(array.shape)} differs from the global model's {tuple(reference[name])}"
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            return f"{name}: non-finite values"
    return None


def _scalars_problem(score: Any, num_samples: Any) -> str | None:
    """Why an update's sample count or score is unusable, or ``None`` (a NaN score is usable)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
        return f"num_samples must be a positive integer, got {num_samples!r}"
    if not isinstance(score, (int, float, np.floating, np.integer)) or isinstance(score, bool):
        return f"score must be a number, got {score!r}"
    if not math.isnan(float(score)) and not 0.0 <= float(score) <= _MAX_SCORE:
        return f"score {float(score)!r} is outside [0, 1]"
    return None


class FedKPerAggregator(ModelAggregator):
    """Streaming FedKPer aggregation (DESIGN §1, §4).

    Each accepted update is added to running sums at once and released; the aggregator keeps two
    running sums (score-weighted and sample-weighted) so that the FedAvg fallback for a round whose
    scores are NaN or sum to zero is exact without holding the site models. Invalid updates are dropped
    with a logged reason and the round goes on with the others.

    Args:
        weighting: ``"score"`` (FedKPer) or ``"samples"`` (FedAvg weighting, for baselines and ablations).

    After :meth:`aggregate_model`, ``last_weights`` maps each site to the weight it really got
    (0.0 for dropped sites) and ``last_dropped`` maps dropped sites to the reason.
    """

    def __init__(self, weighting: str = "score") -> None:
        super().__init__()
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        self.reference: dict[str, tuple[int, ...]] | None = None
        self.last_weights: dict[str, float] = {}
        self.last_dropped: dict[str, str] = {}
        self.reset_stats()

    def set_reference(self, params: Mapping[str, Any]) -> None:
        """Expected keys and shapes of every update: those of the global model sent this round."""
        self.reference = {name: tuple(np.asarray(value).shape) for name, value in params.items()}

    def reset_stats(self) -> None:
        self._by_score = WeightedAverager()
        self._by_samples = WeightedAverager()
        self._sites: list[str] = []
        self._scores: list[float] = []
        self._num_samples: list[int] = []
        self._dropped: dict[str, str] = {}

    def accept_model(self, model: FLModel) -> bool:
        """Validate one site's update and add it to the running sums; returns whether it was accepted."""
        meta = model.meta or {}
        site = str(meta.get("client_name", f"site#{len(self._sites) + len(self._dropped)}"))
        score = meta.get(SCORE_KEY, float("nan") if self.weighting == "samples" else None)
        num_samples = meta.get(NUM_SAMPLES_KEY)
        reason = validate_update(model.params, score, num_samples, self.reference)
        if reason is None and model.params_type not in (None, ParamsType.FULL):
            reason = f"params_type {model.params_type} is not FULL"
        if reason is not None:
            self._dropped[site] = reason
            self.warning(f"dropped the update of {site}: {reason}")
            return False
        state = {name: np.asarray(value) for name, value in model.params.items()}
        score_value = float(score)
        # A NaN score contributes nothing to the score-weighted sum; the fallback sum covers that round.
        self._by_score.add(state, 0.0 if math.isnan(score_value) else score_value)
        self._by_samples.add(state, float(num_samples))
        self._sites.append(site)
        self._scores.append(score_value)
        self._num_samples.append(int(num_samples))
        return True

    def aggregate_model(self) -> FLModel:
        """Return the new global weights; raises ``RuntimeError`` when no update was valid."""
        self.last_dropped = dict(self._dropped)
        if not self._sites:
            self.last_weights = {site: 0.0 for site in self._dropped}
            raise RuntimeError(f"no valid update to aggregate (dropped: {self._dropped})")
        scores = self._scores if self.weighting == "score" else [float("nan")] * len(self._scores)
        weights = aggregation_weights(scores, self._num_samples)
        by_score = self.weighting == "score" and scores_usable(scores)
        averaged = (self._by_score if by_score else self._by_samples).result()
        self.last_weights = {site: float(weight) for site, weight in zip(self._sites, weights)}
        self.last_weights.update({site: 0.0 for site in self._dropped})
        rule = "scores" if by_score else "sample counts"
        self.info(f"aggregated {len(self._sites)} update(s) weighted by {rule}: {self.last_weights}")
        result = FLModel(params_type=ParamsType.FULL, params=averaged)
        self.reset_stats()
        return result
