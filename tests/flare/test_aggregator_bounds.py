"""Bounded influence (issue 11 item 4): each malformed update of the issue, with its exact outcome.

Every test sends honest updates beside the malformed one and checks the global model the round makes,
the weights the aggregator reports and the reason it logs.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedkper_monai.algorithm.update_checks import capped_shares, cast_to_reference, norm_ratio
from fedkper_monai.flare.aggregator import FedKPerAggregator

_GLOBAL = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32), "steps": np.array(4, np.int64)}


def _update(site: str, value, score=0.5, num_samples=10, dtype=np.float32, **extra) -> FLModel:
    params = {"w": np.full((2, 3), value, dtype=dtype), "b": np.full((3,), value, dtype=dtype), "steps": np.array(6, np.int64)}
    params.update(extra)
    return FLModel(params_type=ParamsType.FULL, params=params, meta={"client_name": site, "score": score, "num_samples": num_samples})


def _aggregator(**kwargs) -> FedKPerAggregator:
    aggregator = FedKPerAggregator(**kwargs)
    aggregator.set_reference(_GLOBAL)
    return aggregator


def _round(aggregator: FedKPerAggregator, *updates: FLModel) -> dict:
    for update in updates:
        aggregator.accept_model(update)
    return aggregator.aggregate_model().params


def test_complex_key_is_refused_before_any_sum_is_touched():
    aggregator = _aggregator()
    honest = _update("site-1", 2.0)
    evil = _update("site-evil", 2.0)
    evil.params["b"] = np.full(3, 2.0 + 1.0j)  # the last key: a check per key would already have summed "w"
    result = _round(aggregator, honest, evil, _update("site-2", 2.0))
    np.testing.assert_array_equal(result["w"], np.full((2, 3), 2.0, np.float32))  # the issue saw 64.5
    np.testing.assert_array_equal(result["b"], np.full(3, 2.0, np.float32))
    assert aggregator.last_dropped == {"site-evil": "b: dtype complex128 is not a real number type"}
    assert aggregator.last_weights == {"site-1": 0.5, "site-2": 0.5, "site-evil": 0.0}


@pytest.mark.parametrize(
    "value, dtype_name",
    [(np.array([["a", "b", "c"]] * 2), "<U1"), (np.array([[object()] * 3] * 2, dtype=object), "object")],
)
def test_object_and_string_arrays_are_refused(value, dtype_name):
    aggregator = _aggregator()
    evil = _update("site-evil", 1.0)
    evil.params["w"] = value
    result = _round(aggregator, evil, _update("site-1", 3.0))
    np.testing.assert_array_equal(result["w"], 3.0)
    assert aggregator.last_dropped == {"site-evil": f"w: dtype {dtype_name} is not a real number type"}


def test_float64_1e300_is_refused_and_the_global_model_stays_finite():
    aggregator = _aggregator(max_norm_ratio=0)  # the cast alone catches it
    result = _round(aggregator, _update("site-evil", 1e300, dtype=np.float64), _update("site-1", 2.0))
    assert np.all(np.isfinite(result["w"])) and result["w"].dtype == np.float32
    np.testing.assert_array_equal(result["w"], 2.0)
    assert aggregator.last_dropped == {"site-evil": "w: non-finite values (after casting to float32)"}


def test_float64_update_is_cast_to_the_global_dtypes():
    aggregator = _aggregator()
    result = _round(aggregator, _update("site-1", 2.0, dtype=np.float64), _update("site-2", 4.0, dtype=np.float16))
    assert {name: value.dtype for name, value in result.items()} == {"w": np.float32, "b": np.float32, "steps": np.int64}
    np.testing.assert_array_equal(result["w"], 3.0)
    assert int(result["steps"]) == 6


def test_norm_bound_drops_an_oversized_update_and_logs_it(caplog):
    aggregator = _aggregator()  # default bound: 10x the global model's norm
    with caplog.at_level(logging.WARNING):
        result = _round(aggregator, _update("site-evil", 1e6), _update("site-1", 1.5))
    np.testing.assert_array_equal(result["w"], 1.5)
    assert aggregator.last_dropped["site-evil"].startswith("update norm bound: ||w_site - w_global|| is 1e+06x")
    assert "dropped the update of site-evil: update norm bound" in caplog.text
    # an honest-sized step passes; a configured tighter bound refuses it
    tight = _aggregator(max_norm_ratio=0.1)
    assert not tight.accept_model(_update("site-1", 1.5))
    assert norm_ratio({k: np.asarray(v) for k, v in _update("x", 1.5).params.items()}, _GLOBAL) == pytest.approx(0.5)


def test_nan_score_drops_that_update_only_and_the_others_keep_score_weights():
    aggregator = _aggregator()
    result = _round(
        aggregator,
        _update("site-nan", 100.0, score=float("nan"), num_samples=1000),
        _update("site-1", 1.0, score=0.25, num_samples=30),
        _update("site-2", 5.0, score=0.75, num_samples=10),
    )
    np.testing.assert_allclose(result["w"], 0.25 * 1.0 + 0.75 * 5.0)  # scores, not sample counts
    assert aggregator.last_weights == {"site-1": 0.25, "site-2": 0.75, "site-nan": 0.0}
    assert aggregator.last_dropped == {"site-nan": "score is NaN"}


@pytest.mark.parametrize("score, reason", [(-0.1, "score -0.1 is outside [0, 1]"), (1.5, "score 1.5 is outside [0, 1]"),
                                           ("0.5", "score must be a number, got '0.5'"), (None, "score must be a number, got None"),
                                           (True, "score must be a number, got True")])
def test_out_of_range_or_non_numeric_score_drops_that_update_only(score, reason):
    aggregator = _aggregator()
    result = _round(aggregator, _update("site-evil", 9.0, score=score), _update("site-1", 2.0, score=0.3))
    np.testing.assert_array_equal(result["w"], 2.0)
    assert aggregator.last_dropped == {"site-evil": reason}


def test_sample_count_is_capped_at_the_first_registered_count():
    aggregator = FedKPerAggregator(weighting="samples")
    aggregator.set_reference(_GLOBAL)
    _round(aggregator, _update("site-big", 1.0, num_samples=10), _update("site-1", 3.0, num_samples=30))
    # next round the site claims 1e12 samples: it keeps the 10 it registered, not weight 1.0
    result = _round(aggregator, _update("site-big", 1.0, num_samples=10**12), _update("site-1", 3.0, num_samples=30))
    assert aggregator.last_weights == {"site-big": 0.25, "site-1": 0.75}
    np.testing.assert_allclose(result["w"], 0.25 * 1.0 + 0.75 * 3.0)
    assert aggregator.registered == {"site-big": 10, "site-1": 30}


@pytest.mark.parametrize("count, reason", [(0, "num_samples must be a positive integer, got 0"),
                                           (-4, "num_samples must be a positive integer, got -4"),
                                           (2.5, "num_samples must be a positive integer, got 2.5"),
                                           (None, "num_samples must be a positive integer, got None")])
def test_bad_sample_count_drops_the_update(count, reason):
    aggregator = _aggregator()
    result = _round(aggregator, _update("site-evil", 9.0, num_samples=count), _update("site-1", 2.0))
    np.testing.assert_array_equal(result["w"], 2.0)
    assert aggregator.last_dropped == {"site-evil": reason}


def test_max_weight_is_off_by_default_and_caps_a_share_when_set():
    updates = (_update("site-1", 1.0, score=0.8), _update("site-2", 2.0, score=0.1), _update("site-3", 3.0, score=0.1))
    plain = _aggregator()
    _round(plain, *updates)
    assert plain.last_weights == pytest.approx({"site-1": 0.8, "site-2": 0.1, "site-3": 0.1})
    capped = _aggregator(max_weight=0.5)
    result = _round(capped, *updates)
    assert capped.last_weights == pytest.approx({"site-1": 0.5, "site-2": 0.25, "site-3": 0.25})
    np.testing.assert_allclose(result["w"], 0.5 * 1.0 + 0.25 * 2.0 + 0.25 * 3.0, rtol=1e-6)


def test_capped_shares_and_cast_helpers():
    assert capped_shares([8.0, 1.0, 1.0], 0.5) == [0.5, 0.25, 0.25]
    assert capped_shares([1.0, 0.0], 0.4) == [0.4, 0.4]  # fewer sites than 1 / 0.4: the rest stays with the global model
    assert capped_shares([9.0, 0.5, 0.5, 0.0], 0.4) == pytest.approx([0.4, 0.3, 0.3, 0.0])
    cast, reason = cast_to_reference({"w": np.ones((2, 3)), "b": np.ones(3), "steps": np.array(2.0)}, _GLOBAL)
    assert reason is None and cast["steps"].dtype == np.int64
    assert cast_to_reference({"w": np.ones((2, 3))}, _GLOBAL)[1] == "unexpected keys: missing ['b', 'steps'], extra []"
