"""FedKPer (knowledge-personalized federated learning) for medical imaging on MONAI and NVIDIA FLARE.

Layers (dependencies point down only, see ``../shared/DESIGN.md`` section 3):

- :mod:`fedkper_monai.algorithm`: the FedKPer loss, the site score and aggregation weights, the
  streaming averager and the forgetting metrics; pure torch/numpy.
- :mod:`fedkper_monai.data`: datalists, importers, partitioners, MONAI datasets from ``transforms/``.
- :mod:`fedkper_monai.training`: networks, local objectives (strategies) and the shared train/eval loop.
- :mod:`fedkper_monai.flare`: thin NVIDIA FLARE adapters (learner, aggregator, controller, metrics).
"""

__version__ = "0.1.0"
