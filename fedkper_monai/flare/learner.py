"""Former home of the site adapter (a ``ModelLearner``, deprecated in FLARE 2.9).

The site is now :class:`fedkper_monai.flare.executor.FedKPerExecutor`, a plain FLARE ``Executor``; job
folders written before it named ``fedkper_monai.flare.learner.FedKPerLearner`` and are regenerated with
``python -m fedkper_monai.flare.jobspec jobs`` (or exported again from :mod:`fedkper_monai.flare.recipe`).
The message keys and helpers live in :mod:`fedkper_monai.flare.messages`; they are named here for older imports.
"""

from __future__ import annotations

from fedkper_monai.flare.messages import GLOBAL_VERSION_KEY, SITE_METRICS_KEY, is_initial, received_version, report_to_flmodel

__all__ = ["GLOBAL_VERSION_KEY", "SITE_METRICS_KEY", "report_to_flmodel", "received_version", "is_initial"]
