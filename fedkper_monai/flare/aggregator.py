"""FedKPer's server aggregation as a FLARE ``ModelAggregator``: validate, weight by score, average in a stream.

The checks are :mod:`fedkper_monai.algorithm.update_checks` (pure); this class keeps what spans rounds
(each site's registered sample count) and logs what it drops, caps or bounds.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator

from fedkper_monai.algorithm import WeightedAverager, aggregation_weights, scores_usable
from fedkper_monai.algorithm.weighting import blend_toward_samples
from fedkper_monai.algorithm.update_checks import (
    DEFAULT_MAX_NORM_RATIO,
    capped_shares,
    cast_to_reference,
    norm_ratio,
    sample_count_problem,
    score_problem,
)

__all__ = ["FedKPerAggregator", "SCORE_KEY", "NUM_SAMPLES_KEY"]

SCORE_KEY = "score"
NUM_SAMPLES_KEY = "num_samples"
_WEIGHTINGS = ("score", "samples")


class FedKPerAggregator(ModelAggregator):
    """Streaming FedKPer aggregation (DESIGN §1, §4).

    Each update is checked in full before it touches any sum (keys, shapes, a real numeric dtype cast to
    the global model's, finite values, a norm bound, a score in [0, 1], a positive sample count); a bad
    update is dropped with a logged reason and the round goes on with the others. A NaN or out-of-range
    score drops that update only. A site's sample count is capped at the count it registered in its first
    accepted round. Two running sums (score- and sample-weighted) keep the FedAvg fallback exact for a round
    whose valid scores sum to zero, without holding the site models.

    Args:
        weighting: ``"score"`` (FedKPer) or ``"samples"`` (FedAvg weighting, for baselines and ablations).
        max_norm_ratio: largest ``||w_site - w_global|| / ||w_global||`` accepted (0 disables the bound).
        max_weight: largest share of the aggregate any one site may get (None: uncapped, the paper's
            weighting). With a cap the round's updates are held until aggregation.
        min_effective_sites: opt-in remedy for rounds the score hands to one site: when the score weights
            spread over fewer effective sites (``1 / sum(w^2)``), they are blended with the sample-count
            weights just enough to reach it (:func:`~fedkper_monai.algorithm.weighting.blend_toward_samples`).
            0 (default) keeps the paper's weighting. Exact without holding updates: the blend of the two
            running averages.

    After :meth:`aggregate_model`, ``last_weights`` maps each site to the weight it really got
    (0.0 for dropped sites) and ``last_dropped`` maps dropped sites to the reason.
    """

    def __init__(
        self,
        weighting: str = "score",
        max_norm_ratio: float = DEFAULT_MAX_NORM_RATIO,
        max_weight: float | None = None,
        min_effective_sites: float = 0.0,
    ) -> None:
        super().__init__()
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
        if not max_norm_ratio >= 0:
            raise ValueError(f"max_norm_ratio must be >= 0 (0 disables it), got {max_norm_ratio!r}")
        if max_weight is not None and not 0.0 < float(max_weight) <= 1.0:
            raise ValueError(f"max_weight must be in (0, 1] or null, got {max_weight!r}")
        if not min_effective_sites >= 0:
            raise ValueError(f"min_effective_sites must be >= 0 (0 disables it), got {min_effective_sites!r}")
        self.min_effective_sites = float(min_effective_sites)
        self.weighting = weighting
        self.max_norm_ratio = float(max_norm_ratio)
        self.max_weight = None if max_weight is None else float(max_weight)
        self.reference: dict[str, np.ndarray] | None = None
        self.registered: dict[str, int] = {}  # site -> sample count of its first accepted round
        self.last_weights: dict[str, float] = {}
        self.last_dropped: dict[str, str] = {}
        self.reset_stats()

    def set_reference(self, params: Mapping[str, Any]) -> None:
        """The global model sent this round: the keys, shapes, dtypes and norm every update is checked against."""
        self.reference = {name: np.array(value, copy=True) for name, value in params.items()}

    def reset_stats(self) -> None:
        self._by_score = WeightedAverager()
        self._by_samples = WeightedAverager()
        self._held: list[dict[str, np.ndarray]] = []  # only with max_weight
        self._sites: list[str] = []
        self._scores: list[float] = []
        self._num_samples: list[int] = []
        self._dropped: dict[str, str] = {}

    def _check(self, model: FLModel) -> tuple[dict[str, np.ndarray] | None, float, int, str | None]:
        """``(cast weights, score, sample count, None)`` or ``(None, nan, 0, reason)``."""
        meta = model.meta or {}
        if model.params_type not in (None, ParamsType.FULL):
            return None, float("nan"), 0, f"params_type {model.params_type} is not FULL"
        num_samples = meta.get(NUM_SAMPLES_KEY)
        score = meta.get(SCORE_KEY) if self.weighting == "score" else 0.0
        reason = sample_count_problem(num_samples) or score_problem(score)
        if reason is not None:
            return None, float("nan"), 0, reason
        if self.reference is None:  # no global model given: the first update defines the contract
            self.set_reference({name: np.asarray(value) for name, value in (model.params or {}).items()})
        state, reason = cast_to_reference(model.params, self.reference)
        if reason is not None:
            return None, float("nan"), 0, reason
        if self.max_norm_ratio:
            ratio = norm_ratio(state, self.reference)
            if ratio > self.max_norm_ratio:
                return None, float("nan"), 0, (
                    f"update norm bound: ||w_site - w_global|| is {ratio:.3g}x ||w_global|| "
                    f"(max_norm_ratio {self.max_norm_ratio:g})"
                )
        return state, float(score), int(num_samples), None

    def accept_model(self, model: FLModel) -> bool:
        """Check one site's update and add it to the running sums; returns whether it was accepted."""
        meta = model.meta or {}
        site = str(meta.get("client_name", f"site#{len(self._sites) + len(self._dropped)}"))
        state, score, num_samples, reason = self._check(model)
        if state is None:
            self._dropped[site] = str(reason)
            self.warning(f"dropped the update of {site}: {reason}")
            return False
        registered = self.registered.setdefault(site, num_samples)
        if num_samples > registered:
            self.warning(f"{site} claims {num_samples} samples; capped at the {registered} it registered in its first round")
            num_samples = registered
        if self.max_weight is None:
            self._by_score.add(state, score)
            self._by_samples.add(state, float(num_samples))
        else:
            self._held.append(state)
        self._sites.append(site)
        self._scores.append(score)
        self._num_samples.append(num_samples)
        return True

    def aggregate_model(self) -> FLModel:
        """Return the new global weights; raises ``RuntimeError`` when no update was valid."""
        self.last_dropped = dict(self._dropped)
        if not self._sites:
            self.last_weights = {site: 0.0 for site in self._dropped}
            self.reset_stats()
            raise RuntimeError(f"no valid update to aggregate (dropped: {self.last_dropped})")
        by_score = self.weighting == "score" and scores_usable(self._scores)
        weights = aggregation_weights(self._scores if by_score else [float("nan")] * len(self._sites), self._num_samples)
        blend = self._blend(weights) if by_score else 0.0
        if blend:
            sample_weights = aggregation_weights([float("nan")] * len(self._sites), self._num_samples)
            weights = [(1 - blend) * w + blend * n for w, n in zip(weights, sample_weights)]
        if self.max_weight is None:
            averaged = _mix(self._by_score.result(), self._by_samples.result(), blend) if by_score else self._by_samples.result()
        else:
            weights = self._capped(weights)
            averager = WeightedAverager()
            for state, weight in zip(self._held, weights):
                averager.add(state, weight)
            averaged = averager.result()
        self.last_weights = {site: float(weight) for site, weight in zip(self._sites, weights)}
        self.last_weights.update({site: 0.0 for site in self._dropped})
        rule = "scores" if by_score else "sample counts"
        self.info(f"aggregated {len(self._sites)} update(s) weighted by {rule}: {self.last_weights}")
        result = FLModel(params_type=ParamsType.FULL, params=averaged)
        self.reset_stats()
        return result

    def _blend(self, score_weights: list[float]) -> float:
        """The share of sample-count weights this round needs (0 unless ``min_effective_sites`` is set)."""
        if not self.min_effective_sites:
            return 0.0
        sample_weights = aggregation_weights([float("nan")] * len(self._sites), self._num_samples)
        blend = blend_toward_samples(score_weights, sample_weights, self.min_effective_sites)
        if blend:
            self.info(f"score weights {score_weights} below {self.min_effective_sites:g} effective sites: {blend:.3f} sample-count share blended in")
        return blend

    def _capped(self, weights: list[float]) -> list[float]:
        capped = capped_shares(weights, float(self.max_weight))
        if any(abs(a - b) > 1e-12 for a, b in zip(weights, capped)):
            self.info(f"max_weight {self.max_weight:g} capped the shares {weights} to {capped}")
        return capped


def _mix(by_score: Mapping[str, np.ndarray], by_samples: Mapping[str, np.ndarray], blend: float) -> dict[str, np.ndarray]:
    """``(1 - blend) * by_score + blend * by_samples`` per key (the blended weights' average), dtypes kept."""
    if not blend:
        return dict(by_score)
    return {
        name: ((1.0 - blend) * np.asarray(value, dtype=np.float64) + blend * np.asarray(by_samples[name], dtype=np.float64)).astype(
            np.asarray(value).dtype
        )
        for name, value in by_score.items()
    }
