"""One update per site per round, round-relative bounds and DIFF updates (issue 21 items 3 and 4).

Each hostile case of the issue with its exact refusal or bound; every one fails on the aggregator before it.
"""

from __future__ import annotations

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.filters.exclude_vars import ExcludeVars
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from fedkper_monai.algorithm.update_checks import capped_claims, clip_factors
from fedkper_monai.flare.aggregator import FedKPerAggregator

_GLOBAL = {"w": np.ones((2, 3), np.float32), "b": np.ones(3, np.float32), "steps": np.array(4, np.int64)}
_FLOATS = 9  # float entries of _GLOBAL: distances are |value - 1| * 3


def _update(site, value, score=0.3, num_samples=10, params_type=ParamsType.FULL, meta=None) -> FLModel:
    params = {"w": np.full((2, 3), value, np.float32), "b": np.full(3, value, np.float32), "steps": np.array(6, np.int64)}
    base = {"client_name": site, "score": score, "num_samples": num_samples} if meta is None else meta
    return FLModel(params_type=params_type, params=params, meta=base)


def _aggregator(**kwargs) -> FedKPerAggregator:
    aggregator = FedKPerAggregator(**kwargs)
    aggregator.set_reference(_GLOBAL)
    return aggregator


def _round(aggregator: FedKPerAggregator, *updates: FLModel) -> dict:
    for update in updates:
        aggregator.accept_model(update)
    return aggregator.aggregate_model().params


# --- item 3: one update per site per round ---------------------------------------------------------------


def test_a_second_result_from_a_site_is_dropped_and_its_share_does_not_double():
    aggregator = _aggregator()
    assert aggregator.accept_model(_update("site-1", 2.0, score=0.5))
    assert aggregator.accept_model(_update("site-2", 4.0, score=0.5))
    assert not aggregator.accept_model(_update("site-1", 2.0, score=0.5))  # before: accepted, site-1 at 2/3
    result = aggregator.aggregate_model().params
    np.testing.assert_allclose(result["w"], 3.0)
    assert aggregator.last_weights == {"site-1": 0.5, "site-2": 0.5}
    assert aggregator.last_refused == ["a second result from site-1 in this round: dropped (one update per site per round)"]
    # a site whose first result was dropped cannot try again in the same round either
    assert not aggregator.accept_model(_update("site-3", 2.0, score=2.0))
    assert aggregator.accept_model(_update("site-4", 2.0))
    assert not aggregator.accept_model(_update("site-3", 2.0))
    aggregator.aggregate_model()
    assert aggregator.last_dropped == {"site-3": "score 2.0 is outside [0, 1]"}
    assert aggregator.last_refused == ["a second result from site-3 in this round: dropped (one update per site per round)"]


@pytest.mark.parametrize("meta, shown", [({}, "None"), ({"client_name": ""}, "''"), ({"client_name": 7}, "7")])
def test_an_update_without_a_site_name_is_refused(meta, shown):
    aggregator = _aggregator()
    nameless = _update(None, 50.0, score=1.0, meta={"score": 1.0, "num_samples": 10, **meta})
    assert not aggregator.accept_model(nameless)  # before: accepted as "site#0"
    result = _round(aggregator, _update("site-1", 2.0))
    np.testing.assert_array_equal(result["w"], 2.0)
    assert aggregator.last_weights == {"site-1": 1.0}
    assert aggregator.last_refused == [f"an update without a site name (client_name {shown}): refused"]


# --- item 4: bounded influence ------------------------------------------------------------------------------


def _honest() -> list[FLModel]:
    return [_update(f"site-{i}", value) for i, value in enumerate((1.1, 1.2, 1.3, 1.15))]


def test_a_scaled_sign_flipped_update_under_the_norm_bound_is_clipped_to_the_rounds_median():
    attacker = _update("site-evil", -8.9, score=1.0)  # ||w - g|| = 9.9 ||g||: passes the 10x bound
    aggregator = _aggregator()
    result = _round(aggregator, *_honest(), attacker)
    # median distance 0.2 * 3 (per-entry step 0.2 over 9 entries); the attacker is put back at 3x it:
    # per entry 1 - 0.6 = 0.4, with its score weight 1 / 2.2.
    factor = 3 * 0.2 / 9.9
    assert aggregator.last_clipped == {"site-evil": pytest.approx(factor)}
    assert aggregator.last_weights["site-evil"] == pytest.approx(1 / 2.2)
    expected = (1.0 * 0.4 + 0.3 * (1.1 + 1.2 + 1.3 + 1.15)) / 2.2
    np.testing.assert_allclose(result["w"], expected, rtol=1e-6)  # before: -3.40 (moved by 4.4 per entry)
    assert abs(float(result["w"][0, 0]) - 1.0) < 0.2
    assert int(result["steps"]) == 6  # counters are not distances: averaged as sent
    # with max_weight 0.34 the clipped attacker also keeps at most a third of the round
    capped = _aggregator(max_weight=0.34)
    result = _round(capped, *_honest(), attacker)
    assert capped.last_weights["site-evil"] == pytest.approx(0.34)
    np.testing.assert_allclose(result["w"], 0.34 * 0.4 + 0.165 * (1.1 + 1.2 + 1.3 + 1.15), rtol=1e-6)  # before: -2.4


def test_honest_updates_under_the_clip_threshold_are_untouched_bit_for_bit():
    honest = _honest()
    plain = _round(_aggregator(clip_multiple=0, claim_multiple=0), *honest)
    bounded = _aggregator()
    result = _round(bounded, *honest)
    assert bounded.last_clipped == {}
    for name in _GLOBAL:
        np.testing.assert_array_equal(result[name], plain[name])


def test_with_fewer_than_three_updates_nothing_is_clipped_and_only_the_absolute_bound_holds():
    aggregator = _aggregator()
    result = _round(aggregator, _update("site-1", 1.1), _update("site-evil", -8.9, score=1.0))
    assert aggregator.last_clipped == {}
    np.testing.assert_allclose(result["w"], (0.3 * 1.1 + 1.0 * -8.9) / 1.3, rtol=1e-6)
    assert not aggregator.accept_model(_update("site-2", -9.1, score=1.0))  # 10.1x: the absolute bound
    assert clip_factors([1.0, 50.0], 3.0) == [1.0, 1.0]
    assert clip_factors([1.0, 2.0, 1.5, 30.0], 3.0) == [1.0, 1.0, 1.0, pytest.approx(0.175)]


def test_max_weight_holds_with_fewer_sites_than_its_inverse():
    aggregator = _aggregator(max_weight=0.34)
    result = _round(aggregator, _update("site-1", 2.0, score=0.9), _update("site-evil", -8.9, score=0.1))
    # before: 0.5 each (the cap could not hold); now each keeps 0.34, the rest stays with the global model
    assert aggregator.last_weights == {"site-1": pytest.approx(0.34), "site-evil": pytest.approx(0.34)}
    np.testing.assert_allclose(result["w"], 1.0 + 0.34 * (2.0 - 1.0) + 0.34 * (-8.9 - 1.0), rtol=1e-6)


def test_max_weight_caps_the_effective_weight_on_the_fallback_and_the_blend_paths():
    fallback = _aggregator(max_weight=0.5)
    _round(fallback, _update("site-1", 2.0, score=0.0, num_samples=90), _update("site-2", 2.0, score=0.0, num_samples=5),
           _update("site-3", 2.0, score=0.0, num_samples=5))
    assert fallback.last_weights == pytest.approx({"site-1": 0.5, "site-2": 0.25, "site-3": 0.25})
    blend = _aggregator(max_weight=0.4, min_effective_sites=2.5)
    _round(blend, _update("site-1", 1.2, score=0.9, num_samples=200), _update("site-2", 1.1, score=1e-6),
           _update("site-3", 1.3, score=1e-6))
    assert max(blend.last_weights.values()) == pytest.approx(0.4)
    assert sum(blend.last_weights.values()) == pytest.approx(1.0)


def test_a_first_round_sample_claim_of_1e12_is_capped_at_the_rounds_median_claim():
    aggregator = _aggregator(weighting="samples")
    result = _round(aggregator, _update("site-1", 1.1, num_samples=100), _update("site-2", 1.2, num_samples=120),
                    _update("site-3", 1.3, num_samples=110), _update("site-big", 1.0, num_samples=10**12))
    # median claim 115, cap 4x: 460 (before: 1e12 took weight 1.0)
    assert aggregator.registered == {"site-1": 100, "site-2": 120, "site-3": 110, "site-big": 460}
    assert aggregator.last_weights["site-big"] == pytest.approx(460 / 790)
    np.testing.assert_allclose(result["w"], (100 * 1.1 + 120 * 1.2 + 110 * 1.3 + 460 * 1.0) / 790, rtol=1e-6)
    # the capped count is what it registered: the next round keeps it there
    _round(aggregator, _update("site-big", 1.0, num_samples=10**12), _update("site-1", 1.1, num_samples=100))
    assert aggregator.last_weights == pytest.approx({"site-big": 460 / 560, "site-1": 100 / 560})
    assert capped_claims([120, 80, 10**12], 4.0) == [120, 80, 480]
    assert capped_claims([1, 10**12], 4.0) == [1, 10**12]  # two claims: the median says nothing


# --- DIFF updates (what FLARE's privacy filters send) --------------------------------------------------------


def _diff(site, delta: float, keys=("w", "b")) -> FLModel:
    params = {"w": np.full((2, 3), delta, np.float32), "b": np.full(3, delta, np.float32), "steps": np.array(2, np.int64)}
    return FLModel(params_type=ParamsType.DIFF, params={k: params[k] for k in keys},
                   meta={"client_name": site, "score": 0.3, "num_samples": 10})


def test_a_diff_update_is_added_to_the_global_model_and_checked_like_a_full_one():
    by_diff = _aggregator()
    result = _round(by_diff, _diff("site-1", 0.5, keys=("w", "b", "steps")), _diff("site-2", 1.5, keys=("w", "b", "steps")))
    by_full = _round(_aggregator(), _update("site-1", 1.5), _update("site-2", 2.5))
    for name in _GLOBAL:
        np.testing.assert_array_equal(result[name], by_full[name])
    # an absent key is "no change": steps stays 4, b stays 1 for the site that left it out
    result = _round(_aggregator(), _diff("site-1", 1.0, keys=("w",)), _diff("site-2", 1.0))
    np.testing.assert_allclose(result["b"], 1.5) and np.testing.assert_allclose(result["w"], 2.0)
    assert int(result["steps"]) == 4
    checks = _aggregator()
    bad = {"site-x": _diff("site-x", 1.0), "site-c": _diff("site-c", 1.0), "site-n": _diff("site-n", 11.0),
           "site-f": _diff("site-f", 1.0)}
    bad["site-x"].params["extra"] = np.ones(2, np.float32)
    bad["site-c"].params["b"] = np.full(3, 1.0 + 1.0j)
    bad["site-f"].params["w"] = np.full((2, 3), 1e300)
    _round(checks, *bad.values(), _diff("site-ok", 0.1))
    assert checks.last_dropped == {
        "site-x": "unexpected keys: extra ['extra']",
        "site-c": "b: dtype complex128 is not a real number type",
        "site-n": "update norm bound: ||w_site - w_global|| is 11x ||w_global|| (max_norm_ratio 10)",
        "site-f": "w: non-finite values (after casting to float32)",
    }
    # a FULL update keeps requiring every key
    full = _update("site-1", 2.0)
    del full.params["b"]
    assert not checks.accept_model(full)


def test_a_diff_through_flares_exclude_vars_filter_is_aggregated():
    diff = {"w": np.full((2, 3), 0.5, np.float32), "b": np.full(3, 0.5, np.float32)}
    shareable = DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta={"score": 0.3, "num_samples": 10}).to_shareable()
    filtered = ExcludeVars(exclude_vars=["b"]).process(shareable, FLContext())
    model = FLModelUtils.from_shareable(filtered)
    model.meta["client_name"] = "site-1"  # as FLARE's controller sets it
    assert model.params_type == ParamsType.DIFF and set(model.params) == {"w"}
    aggregator = _aggregator()
    result = _round(aggregator, model)
    np.testing.assert_allclose(result["w"], 1.5) and np.testing.assert_allclose(result["b"], 1.0)
    assert aggregator.last_weights == {"site-1": 1.0}
