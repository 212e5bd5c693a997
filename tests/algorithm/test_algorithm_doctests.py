"""The docstring examples of the algorithm layer run as tests, so they stay true."""

from __future__ import annotations

import doctest

import pytest

from fedkper_monai.algorithm import averaging, dense_loss, forgetting, loss, voxel_forgetting, weighting


@pytest.mark.parametrize("module", [averaging, forgetting, loss, weighting, voxel_forgetting, dense_loss], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_public_api():
    import fedkper_monai.algorithm as algorithm

    assert sorted(algorithm.__all__) == sorted(
        [
            "KnowledgePersonalizationLoss", "NotTrueDistillationLoss", "proximal_term", "label_diversity",
            "fedkper_score", "aggregation_weights", "scores_usable", "WeightedAverager", "FlipTracker", "FlipResult",
            "backward_transfer", "VoxelFlipTracker",
        ]
    )
    assert all(hasattr(algorithm, name) for name in algorithm.__all__)
