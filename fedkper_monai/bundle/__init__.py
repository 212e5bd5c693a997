"""MONAI bundles in and out of a FedKPer run, and inference with its global or personalized models.

- :mod:`~fedkper_monai.bundle.runs`: what a finished run left on disk (models, network spec, transforms, classes).
- :mod:`~fedkper_monai.bundle.netconfig`: a network spec as MONAI bundle config (``network_def``) that needs
  no import of this package.
- :mod:`~fedkper_monai.bundle.export`: ``fedkper-monai bundle export``, a self-contained MONAI bundle.
- :mod:`~fedkper_monai.bundle.inference`: ``fedkper-monai predict`` (a bundle or a state dict, batches, CSV).
- :mod:`~fedkper_monai.bundle.evaluation`: ``fedkper-monai evaluate`` (accuracy, balanced accuracy, per-class
  recall, confusion matrix).

A site's own bundle as its network and transforms (``$FEDKPER_BUNDLE_ROOT``, a job naming ``"bundle"``) is read
by :mod:`fedkper_monai.site_bundle`, below this package, because data and training need it too.

Nothing here is imported by the package at start-up; the CLI imports these modules when a command runs.
"""
