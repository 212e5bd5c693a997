"""FedKPer (knowledge-personalized federated learning) for medical imaging on MONAI and NVIDIA FLARE.

Layers, lowest first; a layer imports only those below it (``tests/test_structure.py`` checks it, and
``docs/contributing.md`` draws it):

- the ground floor (``fedkper_monai/*.py``): errors, file I/O, the metrics schema, the round schedule, the
  algorithm registry, the job-field allow-lists, the transform configs, a site's own bundle, run files;
- :mod:`fedkper_monai.algorithm`: the FedKPer loss, the site score and aggregation weights, the
  streaming averager and the forgetting metrics; pure torch/numpy;
- :mod:`fedkper_monai.data`: datalists, importers, partitioners, MONAI datasets from ``transforms/``;
- :mod:`fedkper_monai.training`: networks, tasks, local objectives (strategies), the site round;
- :mod:`fedkper_monai.bundle` (MONAI bundles out, predict, evaluate) and :mod:`fedkper_monai.report` side by side;
- :mod:`fedkper_monai.flare`: what NVIDIA FLARE loads (controller, aggregator, executor, evaluator, persistor);
- :mod:`fedkper_monai.launch`: starting FLARE (simulator, POC, the lab federation, pre-launch checks, recipe);
- :mod:`fedkper_monai.experiment`: the comparison runner; :mod:`fedkper_monai.cli` on top.
"""

__version__ = "0.1.0"
