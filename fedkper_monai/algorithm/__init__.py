"""FedKPer's algorithm layer: pure torch/numpy, no files, no datasets, no FLARE, no logging.

- :mod:`.loss`: :class:`KnowledgePersonalizationLoss` (FedKPer), :class:`NotTrueDistillationLoss`
  (FedNTD) and :func:`proximal_term` (FedProx).
- :mod:`.weighting`: :func:`label_diversity`, :func:`fedkper_score`, :func:`aggregation_weights`.
- :mod:`.averaging`: :class:`WeightedAverager`, the server's streaming weighted average.
- :mod:`.forgetting`: :class:`FlipTracker` / :class:`FlipResult` (flips, NFR, per-class forgetting)
  and :func:`backward_transfer`; :mod:`.voxel_forgetting`: :class:`VoxelFlipTracker` (segmentation).
- :mod:`.dense_loss`: the supervised term of dense objectives (cross-entropy or MONAI's Dice + CE).
"""

from .averaging import WeightedAverager
from .forgetting import FlipResult, FlipTracker, backward_transfer
from .voxel_forgetting import VoxelFlipTracker
from .loss import KnowledgePersonalizationLoss, NotTrueDistillationLoss, proximal_term
from .weighting import aggregation_weights, fedkper_score, label_diversity, scores_usable

__all__ = [
    "KnowledgePersonalizationLoss",
    "NotTrueDistillationLoss",
    "proximal_term",
    "label_diversity",
    "fedkper_score",
    "aggregation_weights",
    "scores_usable",
    "WeightedAverager",
    "FlipTracker",
    "FlipResult",
    "VoxelFlipTracker",
    "backward_transfer",
]
