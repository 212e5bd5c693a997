"""FedKPerAggregator: docs/design.md, The reference setting weighting with its fallback, §4 validation, streaming."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedkper_monai.flare.aggregator import FedKPerAggregator


def _update(site: str, value: float, score: float, num_samples=10, shape=(2, 3)) -> FLModel:
    params = {"w": np.full(shape, value, dtype=np.float32), "b": np.full((3,), value, dtype=np.float32)}
    return FLModel(params_type=ParamsType.FULL, params=params, meta={"client_name": site, "score": score, "num_samples": num_samples})


def _aggregator(weighting: str = "score") -> FedKPerAggregator:
    aggregator = FedKPerAggregator(weighting=weighting)
    aggregator.set_reference({"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)})
    return aggregator


def test_score_weighting_matches_hand_computation():
    aggregator = _aggregator()
    assert aggregator.accept_model(_update("site-1", 1.0, 0.25))
    assert aggregator.accept_model(_update("site-2", 5.0, 0.75, num_samples=1000))
    result = aggregator.aggregate_model()
    # 0.25 * 1 + 0.75 * 5 = 4.0, whatever the sample counts
    np.testing.assert_allclose(result.params["w"], 4.0)
    assert result.params["w"].dtype == np.float32
    assert aggregator.last_weights == {"site-1": 0.25, "site-2": 0.75}


def test_zero_scores_fall_back_to_sample_counts():
    aggregator = _aggregator()
    aggregator.accept_model(_update("site-1", 1.0, 0.0, num_samples=10))
    aggregator.accept_model(_update("site-2", 5.0, 0.0, num_samples=30))
    result = aggregator.aggregate_model()
    np.testing.assert_allclose(result.params["w"], 0.25 * 1.0 + 0.75 * 5.0)
    assert aggregator.last_weights == {"site-1": 0.25, "site-2": 0.75}


def test_sample_weighting_ignores_scores():
    aggregator = _aggregator("samples")
    aggregator.accept_model(_update("site-1", 1.0, 0.9, num_samples=30))
    aggregator.accept_model(_update("site-2", 5.0, 0.1, num_samples=10))
    np.testing.assert_allclose(aggregator.aggregate_model().params["b"], 0.75 * 1.0 + 0.25 * 5.0)


def test_bad_updates_are_dropped_with_a_logged_reason_and_the_round_completes(caplog):
    aggregator = _aggregator()
    nan_update = _update("site-nan", 1.0, 0.5)
    nan_update.params["w"][0, 0] = np.nan
    bad = {
        "site-nan": nan_update,
        "site-shape": _update("site-shape", 1.0, 0.5, shape=(3, 2)),
        "site-score": _update("site-score", 1.0, 1e9),
        "site-count": _update("site-count", 1.0, 0.5, num_samples=-4),
    }
    with caplog.at_level(logging.WARNING):
        for update in bad.values():
            assert not aggregator.accept_model(update)
        assert aggregator.accept_model(_update("site-good", 2.0, 0.4))
        result = aggregator.aggregate_model()
    np.testing.assert_allclose(result.params["w"], 2.0)
    assert set(aggregator.last_dropped) == set(bad)
    assert "non-finite" in aggregator.last_dropped["site-nan"]
    assert "shape (3, 2)" in aggregator.last_dropped["site-shape"]
    assert "outside [0, 1]" in aggregator.last_dropped["site-score"]
    assert "positive integer" in aggregator.last_dropped["site-count"]
    assert aggregator.last_weights["site-good"] == 1.0
    assert all(aggregator.last_weights[site] == 0.0 for site in bad)
    logged = caplog.text
    for site in bad:
        assert f"dropped the update of {site}" in logged


def test_no_valid_update_raises_and_state_resets():
    aggregator = _aggregator()
    aggregator.accept_model(_update("site-1", 1.0, 2.0))
    with pytest.raises(RuntimeError, match="no valid update"):
        aggregator.aggregate_model()
    aggregator.reset_stats()
    aggregator.accept_model(_update("site-1", 3.0, 0.5))
    np.testing.assert_allclose(aggregator.aggregate_model().params["w"], 3.0)


def test_unexpected_keys_are_dropped():
    aggregator = _aggregator()
    update = _update("site-1", 1.0, 0.5)
    del update.params["b"]
    assert not aggregator.accept_model(update)
    assert "missing ['b']" in aggregator._dropped["site-1"]


def test_min_effective_sites_blends_a_collapsed_round_toward_sample_counts():
    from fedkper_monai.algorithm.weighting import effective_sites

    aggregator = FedKPerAggregator(weighting="score", min_effective_sites=1.5)
    aggregator.set_reference({"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32)})
    # A one-class site scores ~1e-6: without the remedy its partner carries 99.9996% of the aggregate.
    aggregator.accept_model(_update("site-1", 1.0, 0.37, num_samples=30))
    aggregator.accept_model(_update("site-2", 5.0, 1e-6, num_samples=10))
    result = aggregator.aggregate_model()
    weights = [aggregator.last_weights["site-1"], aggregator.last_weights["site-2"]]
    assert effective_sites(weights) == pytest.approx(1.5) and sum(weights) == pytest.approx(1.0)
    # The global model is exactly the blended weights' average (from the two running sums, no update held).
    np.testing.assert_allclose(result.params["w"], weights[0] * 1.0 + weights[1] * 5.0, rtol=1e-6)
    # A round that already spreads over enough sites keeps the paper's score weights.
    aggregator.accept_model(_update("site-1", 1.0, 0.6))
    aggregator.accept_model(_update("site-2", 5.0, 0.4))
    aggregator.aggregate_model()
    assert aggregator.last_weights == {"site-1": pytest.approx(0.6), "site-2": pytest.approx(0.4)}
