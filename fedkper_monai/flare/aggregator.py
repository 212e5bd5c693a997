"""FedKPer's server aggregation as a FLARE ``ModelAggregator``: validate, bound, weight by score, average.

The checks are :mod:`fedkper_monai.algorithm.update_checks` (pure); this class keeps what spans rounds
(each site's registered sample count) and logs what it drops, clips, caps or bounds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator

from fedkper_monai.algorithm import WeightedAverager, aggregation_weights, scores_usable
from fedkper_monai.algorithm.update_checks import (
    DEFAULT_CLAIM_MULTIPLE,
    DEFAULT_CLIP_MULTIPLE,
    DEFAULT_MAX_NORM_RATIO,
    capped_claims,
    capped_shares,
    cast_to_reference,
    clip_factors,
    clipped,
    diff_to_full,
    distance,
    norm_ratio,
    sample_count_problem,
    score_problem,
)
from fedkper_monai.algorithm.weighting import blend_toward_samples

__all__ = ["FedKPerAggregator", "SCORE_KEY", "NUM_SAMPLES_KEY", "SITE_KEY"]

SCORE_KEY = "score"
NUM_SAMPLES_KEY = "num_samples"
# FLARE's ModelController writes the authenticated client's name here (BaseModelController._process_result).
SITE_KEY = "client_name"
_WEIGHTINGS = ("score", "samples")


class FedKPerAggregator(ModelAggregator):
    """FedKPer aggregation with bounded influence (docs/design.md, The reference setting; docs/design.md, Rules the code keeps; issue 21).

    Each update is checked in full before it touches any sum (a site name, one update per site per round,
    keys, shapes, a real numeric dtype cast to the global model's, finite values, a norm bound, a score in
    [0, 1], a positive sample count); a bad update is dropped with a logged reason and the round goes on with
    the others. A ``DIFF`` update (``params_type`` DIFF, what FLARE's privacy filters send) is turned into
    full weights first (``global + diff``, an absent key is no change) and then checked the same way.

    Then the round-relative bounds, once every update of the round is in: with at least 3 updates, an update
    farther than ``clip_multiple`` times the round's median distance ``d`` from the global model ``g`` is
    clipped to ``g + c (w - g)``, ``c = clip_multiple * median / d``; a sample-count claim above
    ``claim_multiple`` times the round's median claim is capped to it (a site keeps the count it registered
    in its first accepted round, after that cap). ``max_weight`` caps every site's final share.

    The sums stream: each accepted update goes into two running sums (score- and sample-weighted) and to a
    spool file on disk, so memory stays one model whatever the number of sites. A round where nothing is
    clipped, capped or blended by ``max_weight`` takes the running sums (bit-identical to plain streaming);
    otherwise the spooled updates are read back one at a time.

    Args:
        weighting: ``"score"`` (FedKPer) or ``"samples"`` (FedAvg weighting, for baselines and ablations).
        max_norm_ratio: largest ``||w_site - w_global|| / ||w_global||`` accepted (0 disables the bound).
        max_weight: largest share of the aggregate any one site may get, after every renormalization (None:
            uncapped, the paper's weighting). With fewer than ``1 / max_weight`` updates each gets
            ``max_weight`` and the rest of the weight stays with the current global model.
        min_effective_sites: opt-in remedy for rounds the score hands to one site: when the score weights
            spread over fewer effective sites (``1 / sum(w^2)``), they are blended with the sample-count
            weights just enough to reach it (:func:`~fedkper_monai.algorithm.weighting.blend_toward_samples`).
            0 (default) keeps the paper's weighting.
        clip_multiple: the round-relative distance bound (0 disables it).
        claim_multiple: the round-relative sample-count bound (0 disables it).

    After :meth:`aggregate_model`, ``last_weights`` maps each site to the share it really got (0.0 for
    dropped sites), ``last_dropped`` maps dropped sites to the reason, ``last_clipped`` maps clipped sites
    to their factor ``c`` and ``last_refused`` lists the results that were no site's one update (a second
    result of a site, a result without a site name).
    """

    def __init__(
        self,
        weighting: str = "score",
        max_norm_ratio: float = DEFAULT_MAX_NORM_RATIO,
        max_weight: float | None = None,
        min_effective_sites: float = 0.0,
        clip_multiple: float = DEFAULT_CLIP_MULTIPLE,
        claim_multiple: float = DEFAULT_CLAIM_MULTIPLE,
    ) -> None:
        super().__init__()
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
        for name, value in (("max_norm_ratio", max_norm_ratio), ("min_effective_sites", min_effective_sites),
                            ("clip_multiple", clip_multiple), ("claim_multiple", claim_multiple)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0 (0 disables it), got {value!r}")
        if 0 < clip_multiple < 1 or 0 < claim_multiple < 1:
            raise ValueError(f"clip_multiple and claim_multiple must be 0 (off) or >= 1 (a multiple of the median), "
                             f"got {clip_multiple!r}, {claim_multiple!r}")
        if max_weight is not None and not 0.0 < float(max_weight) <= 1.0:
            raise ValueError(f"max_weight must be in (0, 1] or null, got {max_weight!r}")
        self.min_effective_sites = float(min_effective_sites)
        self.weighting = weighting
        self.max_norm_ratio = float(max_norm_ratio)
        self.max_weight = None if max_weight is None else float(max_weight)
        self.clip_multiple = float(clip_multiple)
        self.claim_multiple = float(claim_multiple)
        self.reference: dict[str, np.ndarray] | None = None
        self.registered: dict[str, int] = {}  # site -> sample count of its first accepted round (after the cap)
        self.last_weights: dict[str, float] = {}
        self.last_dropped: dict[str, str] = {}
        self.last_clipped: dict[str, float] = {}
        self.last_refused: list[str] = []
        self._spool: tempfile.TemporaryDirectory | None = None
        self.reset_stats()

    def set_reference(self, params: Mapping[str, Any]) -> None:
        """The global model sent this round: the keys, shapes, dtypes and norm every update is checked against."""
        self.reference = {name: np.array(value, copy=True) for name, value in params.items()}

    def reset_stats(self) -> None:
        self._by_score = WeightedAverager()
        self._by_samples = WeightedAverager()
        if self._spool is not None:
            self._spool.cleanup()
        self._spool = None
        self._sites: list[str] = []
        self._scores: list[float] = []
        self._num_samples: list[int] = []
        self._distances: list[float] = []
        self._dropped: dict[str, str] = {}
        self._refused: list[str] = []

    def _check(self, model: FLModel) -> tuple[dict[str, np.ndarray] | None, float, int, str | None]:
        """``(cast weights, score, sample count, None)`` or ``(None, nan, 0, reason)``."""
        meta = model.meta or {}
        if model.params_type not in (None, ParamsType.FULL, ParamsType.DIFF):
            return None, float("nan"), 0, f"params_type {model.params_type} is neither FULL nor DIFF"
        num_samples = meta.get(NUM_SAMPLES_KEY)
        score = meta.get(SCORE_KEY) if self.weighting == "score" else 0.0
        reason = sample_count_problem(num_samples) or score_problem(score)
        if reason is not None:
            return None, float("nan"), 0, reason
        params = model.params
        if self.reference is None:  # no global model given: the first update defines the contract
            if model.params_type == ParamsType.DIFF:
                return None, float("nan"), 0, "a DIFF update needs the global model (set_reference) to add to"
            self.set_reference({name: np.asarray(value) for name, value in (params or {}).items()})
        if model.params_type == ParamsType.DIFF:
            params, reason = diff_to_full(params, self.reference)
            if reason is not None:
                return None, float("nan"), 0, reason
        state, reason = cast_to_reference(params, self.reference)
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
        site = (model.meta or {}).get(SITE_KEY)
        if not isinstance(site, str) or not site:
            return self._refuse(f"an update without a site name ({SITE_KEY} {site!r}): refused")
        if site in self._dropped or site in self._sites:
            return self._refuse(f"a second result from {site} in this round: dropped (one update per site per round)")
        state, score, num_samples, reason = self._check(model)
        if state is None:
            self._dropped[site] = str(reason)
            self.warning(f"dropped the update of {site}: {reason}")
            return False
        registered = self.registered.get(site)
        if registered is not None and num_samples > registered:
            self.warning(f"{site} claims {num_samples} samples; capped at the {registered} it registered in its first round")
            num_samples = registered
        self._by_score.add(state, score)
        self._by_samples.add(state, float(num_samples))
        self._hold(state)
        self._sites.append(site)
        self._scores.append(score)
        self._num_samples.append(num_samples)
        self._distances.append(distance(state, self.reference))
        return True

    def _refuse(self, reason: str) -> bool:
        self._refused.append(reason)
        self.warning(reason)
        return False

    def _hold(self, state: Mapping[str, np.ndarray]) -> None:
        """Spool one accepted update to disk, the reference's keys in order (``.npy`` arrays, never pickles)."""
        if self._spool is None:
            self._spool = tempfile.TemporaryDirectory(prefix="fedkper_round_")
        assert self.reference is not None
        with open(Path(self._spool.name) / f"{len(self._sites)}.npys", "wb") as stream:
            for name in self.reference:
                np.lib.format.write_array(stream, np.asarray(state[name]), allow_pickle=False)

    def _held(self, index: int) -> dict[str, np.ndarray]:
        assert self._spool is not None and self.reference is not None
        with open(Path(self._spool.name) / f"{index}.npys", "rb") as stream:
            return {name: np.lib.format.read_array(stream, allow_pickle=False) for name in self.reference}

    def aggregate_model(self) -> FLModel:
        """Return the new global weights; raises ``RuntimeError`` when no update was valid."""
        self.last_dropped = dict(self._dropped)
        self.last_refused = list(self._refused)
        self.last_clipped = {}
        if not self._sites:
            self.last_weights = {site: 0.0 for site in self._dropped}
            self.reset_stats()
            raise RuntimeError(f"no valid update to aggregate (dropped: {self.last_dropped}; refused: {self.last_refused})")
        claims = self._capped_claims()
        by_score = self.weighting == "score" and scores_usable(self._scores)
        weights, blend = self._round_weights(by_score, claims)
        factors = clip_factors(self._distances, self.clip_multiple)
        self.last_clipped = {site: float(c) for site, c in zip(self._sites, factors) if c < 1.0}
        if self.last_clipped:
            self.warning(f"clipped to {self.clip_multiple:g}x the round's median distance from the global model: {self.last_clipped}")
        if self.max_weight is None and not self.last_clipped and claims == self._num_samples:
            averaged = _mix(self._by_score.result(), self._by_samples.result(), blend) if by_score else self._by_samples.result()
        else:
            averaged = self._reaverage(weights, factors)
        self.last_weights = {site: float(weight) for site, weight in zip(self._sites, weights)}
        self.last_weights.update({site: 0.0 for site in self._dropped})
        rule = "scores" if by_score else "sample counts"
        self.info(f"aggregated {len(self._sites)} update(s) weighted by {rule}: {self.last_weights}")
        result = FLModel(params_type=ParamsType.FULL, params=averaged)
        self.reset_stats()
        return result

    def _round_weights(self, by_score: bool, claims: list[int]) -> tuple[list[float], float]:
        """The final shares (scores or sample counts, blended, capped by ``max_weight``) and the blend used."""
        weights = aggregation_weights(self._scores if by_score else [float("nan")] * len(self._sites), claims)
        blend = self._blend(weights, claims) if by_score else 0.0
        if blend:
            sample_weights = aggregation_weights([float("nan")] * len(self._sites), claims)
            weights = [(1 - blend) * w + blend * n for w, n in zip(weights, sample_weights)]
        if self.max_weight is not None:
            weights = self._capped(weights)
        return weights, blend

    def _capped_claims(self) -> list[int]:
        """The round's sample counts after the median-claim cap; a site's first accepted round registers its count."""
        claims = capped_claims(self._num_samples, self.claim_multiple)
        for site, claim, capped in zip(self._sites, self._num_samples, claims):
            if capped < claim:
                self.warning(f"{site} claims {claim} samples; capped at {capped} ({self.claim_multiple:g}x the round's median claim)")
            self.registered.setdefault(site, capped)
        return claims

    def _reaverage(self, weights: list[float], factors: list[float]) -> dict[str, np.ndarray]:
        """``g + sum_i w_i c_i (w_i - g)`` from the spooled updates, one in memory at a time; a share the cap
        left over (weights summing to less than 1) stays with the global model ``g``."""
        assert self.reference is not None
        averager = WeightedAverager()
        for index, (weight, factor) in enumerate(zip(weights, factors)):
            averager.add(clipped(self._held(index), self.reference, factor), weight)
        leftover = 1.0 - float(sum(weights))
        if leftover > 1e-12:
            averager.add(self.reference, leftover)
        return averager.result()

    def _blend(self, score_weights: list[float], claims: list[int]) -> float:
        """The share of sample-count weights this round needs (0 unless ``min_effective_sites`` is set)."""
        if not self.min_effective_sites:
            return 0.0
        sample_weights = aggregation_weights([float("nan")] * len(self._sites), claims)
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
