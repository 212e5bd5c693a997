"""A site's model selection: its personalized model that was best on a validation part of its own training data.

Opt-in, so that the runs of today train on the same samples and report the same figures: a site selects only
when its settings carve one (``val_fraction`` > 0: that share of its training list, seeded per site, no longer
trained on) or when its own datalist carries a ``"validation"`` list (``fedkper-monai prepare`` writes none into
site datalists, so a site has one only when its operator wrote it; then nothing is carved and its training list
is unchanged). The local test split is never used to select: a validation list that shares a sample with it is
refused. The best model is kept as ``best_personalized_model.pt`` beside ``personalized_model.pt``
(:mod:`fedkper_monai.training.site_state`); its round and score live in the site's state, so a restarted or
resumed site continues the same selection.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable

import numpy as np
import torch

from fedkper_monai.errors import DataError
from fedkper_monai.schedule import BestSelection
from fedkper_monai.training.site_config import check_val_fraction
from fedkper_monai.training.site_state import BEST_MODEL_FILE, SiteState

__all__ = ["split_validation", "SiteSelection"]


def split_validation(data: Any, val_fraction: float, seed: int, site: str) -> tuple[Any, list[dict]]:
    """``data`` (a :class:`~fedkper_monai.data.Datalist`) without its validation part, and that part.

    The datalist's own ``"validation"`` list when it has one (nothing carved); else, with ``val_fraction`` > 0,
    ``max(1, round(val_fraction * n))`` of its ``n`` training entries drawn under (seed, site); else none.

    Raises:
        DataError: naming the datalist and the field: a validation list that shares an id or image with the
            local test split, or a carve that would leave no training sample.
    """
    check_val_fraction(val_fraction, "site settings")
    if data.validation:
        test = {entry.get("id") for entry in data.test} | {str(entry.get("image")) for entry in data.test}
        shared = [entry.get("id") for entry in data.validation if entry.get("id") in test or str(entry.get("image")) in test]
        if shared:
            raise DataError(data.path, f"site {site}: {len(shared)} validation samples are in its local test split too "
                                       f"(e.g. {shared[0]!r}); selecting on the test split would overstate it", field="validation")
        return data, list(data.validation)
    if not val_fraction:
        return data, []
    training = list(data.training)
    count = max(1, int(round(float(val_fraction) * len(training))))
    if count >= len(training):
        raise DataError(data.path, f"site {site} has {len(training)} training samples: val_fraction {val_fraction} "
                                   "leaves none to train on", field="training")
    rng = np.random.default_rng([int(seed), zlib.crc32(site.encode("utf-8"))])
    chosen = set(int(i) for i in rng.choice(len(training), size=count, replace=False))
    kept = [entry for i, entry in enumerate(training) if i not in chosen]
    return dataclasses.replace(data, training=kept), [entry for i, entry in enumerate(training) if i in chosen]


class SiteSelection:
    """The best personalized model on the site's validation part (``loader``; None: no selection).

    Args:
        loader: evaluation loader over the validation part (evaluation transforms, in order), or None.
        size: samples of the validation part (reported as ``validation_size``).
    """

    def __init__(self, loader: Any, size: int) -> None:
        self.loader = loader
        self.size = int(size)
        self.best = BestSelection()

    def consider(self, round_index: int, model: torch.nn.Module, evaluate: Callable[[torch.nn.Module, Any], Any],
                 store: SiteState) -> float | None:
        """Score ``model`` (this round's personalized model) on the validation part; keep it when a new best.

        Returns the score (accuracy, or mean foreground Dice), None without a validation part.
        """
        if self.loader is None:
            return None
        score = float(evaluate(model, self.loader).accuracy)
        if self.best.update(round_index, score):
            store.write_model(BEST_MODEL_FILE, model.state_dict())
        return score
