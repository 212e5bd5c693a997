"""Site score and aggregation weights: hand-computed values and the FedAvg fallbacks."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from fedkper_monai.algorithm import aggregation_weights, fedkper_score, label_diversity


class TestLabelDiversity:
    def test_one_class_site_has_zero_entropy(self):
        assert label_diversity([7, 0, 0], 3) == 0.0

    def test_uniform_site_has_entropy_one(self):
        assert label_diversity([4, 4, 4], 3) == pytest.approx(1.0, abs=1e-12)

    def test_empty_site_and_single_class_task(self):
        assert label_diversity([0, 0, 0], 3) == 0.0
        assert label_diversity([12], 1) == 0.0

    def test_hand_values(self):
        # Two of four classes, equal counts: ln 2 / ln 4 = 0.5.
        assert label_diversity([5, 5, 0, 0], 4) == pytest.approx(0.5, abs=1e-12)
        # p = (1/4, 3/4): binary entropy of 0.25 in bits = 0.8112781244591328.
        assert label_diversity([1, 3], 2) == pytest.approx(0.8112781244591328, abs=1e-12)

    def test_normalized_by_the_task_classes_not_the_site_classes(self):
        # Uniform over 2 classes, but the task has 8: ln 2 / ln 8 = 1/3.
        assert label_diversity([3, 3, 0, 0, 0, 0, 0, 0], 8) == pytest.approx(1 / 3, abs=1e-12)

    def test_mapping_counts_absent_classes_as_zero(self):
        assert label_diversity({0: 5, 2: 5}, 4) == pytest.approx(0.5, abs=1e-12)
        assert label_diversity(Counter([1, 1, 3]), 4) == pytest.approx(label_diversity([0, 2, 0, 1], 4))

    def test_rejects_negative_counts(self):
        with pytest.raises(ValueError, match="non-negative"):
            label_diversity([3, -1, 2], 3)

    def test_rejects_wrong_length_and_bad_keys(self):
        with pytest.raises(ValueError, match=r"expected shape \(4,\)"):
            label_diversity([1, 2, 3], 4)
        with pytest.raises(ValueError, match="not a class index"):
            label_diversity({4: 1}, 4)
        with pytest.raises(ValueError, match="num_classes"):
            label_diversity([1], 0)


class TestFedKPerScore:
    def test_hand_value(self):
        # 0.8 * (1e-6 + 0.5)
        assert fedkper_score(0.8, [5, 5, 0, 0], 4) == pytest.approx(0.4000008, abs=1e-15)

    def test_one_class_site_keeps_a_tiny_score(self):
        assert fedkper_score(0.9, [10, 0], 2) == pytest.approx(0.9e-6, abs=1e-18)
        assert fedkper_score(0.9, [10, 0], 2, eps=0.0) == 0.0

    def test_negative_accuracy_scores_zero(self):
        assert fedkper_score(-0.2, [1, 1], 2) == 0.0

    def test_nan_accuracy_gives_nan(self):
        assert math.isnan(fedkper_score(float("nan"), [1, 1], 2))

    def test_rejects_accuracy_above_one_and_negative_eps(self):
        with pytest.raises(ValueError, match="at most 1"):
            fedkper_score(1.5, [1, 1], 2)
        with pytest.raises(ValueError, match="eps"):
            fedkper_score(0.5, [1, 1], 2, eps=-1.0)


class TestAggregationWeights:
    def test_normalized_scores(self):
        assert aggregation_weights([0.1, 0.3], [5, 5]) == pytest.approx([0.25, 0.75], abs=1e-12)
        assert aggregation_weights([0.2, 0.2, 0.6], [1, 100, 1]) == pytest.approx([0.2, 0.2, 0.6], abs=1e-12)

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_non_finite_score_falls_back_to_sample_counts(self, bad):
        assert aggregation_weights([bad, 0.5], [10, 30]) == pytest.approx([0.25, 0.75], abs=1e-12)

    def test_zero_sum_falls_back_to_sample_counts(self):
        # Every sampled site has train accuracy 0: the reference code turned the model into NaN here.
        assert aggregation_weights([0.0, 0.0, 0.0], [1, 1, 2]) == pytest.approx([0.25, 0.25, 0.5], abs=1e-12)

    def test_empty_round(self):
        assert aggregation_weights([], []) == []

    def test_weights_sum_to_one(self):
        weights = aggregation_weights([0.013, 0.7, 1e-6, 0.29], [3, 5, 7, 11])
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)

    def test_rejects_bad_sample_counts(self):
        with pytest.raises(ValueError, match="non-negative"):
            aggregation_weights([0.1, 0.2], [10, -1])
        with pytest.raises(ValueError, match="all 0"):
            aggregation_weights([0.1, 0.2], [0, 0])
        with pytest.raises(ValueError, match="non-negative"):
            aggregation_weights([0.1, 0.2], [float("nan"), 3])

    def test_rejects_length_mismatch_and_negative_score(self):
        with pytest.raises(ValueError, match="length"):
            aggregation_weights([0.1, 0.2], [10])
        with pytest.raises(ValueError, match="scores must be non-negative"):
            aggregation_weights([-0.1, 0.2], [10, 10])


def test_scores_usable_matches_the_aggregation_rule():
    from fedkper_monai.algorithm import scores_usable

    assert scores_usable([0.2, 0.0])
    assert not scores_usable([0.0, 0.0])
    assert not scores_usable([float("nan"), 0.5])
    assert not scores_usable([])


def test_noisy_score_is_the_laplace_mechanism_clipped_to_the_score_range():
    import numpy as np

    from fedkper_monai.algorithm.weighting import noisy_score

    rng = np.random.default_rng(0)
    draws = np.array([noisy_score(0.5, epsilon=2.0, rng=rng) for _ in range(20000)])
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    # Laplace(0, 1/2) around 0.5: half the mass within 0.5 * ln 2 ~ 0.347 of it (before clipping).
    assert np.mean(np.abs(draws - 0.5) <= 0.5 * np.log(2)) == pytest.approx(0.5, abs=0.02)
    precise = [noisy_score(0.5, epsilon=1e6, rng=rng) for _ in range(100)]
    assert max(abs(x - 0.5) for x in precise) < 1e-4
    assert np.isnan(noisy_score(float("nan"), epsilon=1.0, rng=rng))
    with pytest.raises(ValueError, match="epsilon"):
        noisy_score(0.5, epsilon=0.0, rng=rng)
