"""GlobalEvaluator on the real RetinaMNIST global test list: its flip memory spans evaluations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkper_monai.flare.evaluator import GlobalEvaluator
from fedkper_monai.flare.weights import to_numpy
from fedkper_monai.training import build_network


def _always_predicts(network: dict, label: int) -> dict[str, np.ndarray]:
    """Weights whose logits are the classifier bias alone: every sample is put in class ``label``."""
    torch.manual_seed(0)
    params = to_numpy(build_network(**network).state_dict())
    params["classifier.weight"] = np.zeros_like(params["classifier.weight"])
    bias = np.zeros_like(params["classifier.bias"])
    bias[label] = 1.0
    params["classifier.bias"] = bias
    return params


def test_global_nfr_counts_flips_since_the_previous_evaluation(retina_federation, retina_network):
    evaluator = GlobalEvaluator(network=retina_network, data_root=str(retina_federation), device="cpu")
    first = evaluator.evaluate(_always_predicts(retina_network, 0))
    assert first is not None and first["nfr"] == 0.0, "nothing to flip from at the first evaluation"
    share_of_class_0 = first["accuracy"]
    assert share_of_class_0 > 0
    # Every sample of class 0 was right and is now wrong; the others were wrong already.
    second = evaluator.evaluate(_always_predicts(retina_network, 1))
    assert second["nfr"] == pytest.approx(share_of_class_0)
    assert second["per_class_forgetting"][0] == pytest.approx(1.0)
    assert second["per_class_forgetting"][1] == pytest.approx(0.0)
    # The same model again: nothing flips.
    assert evaluator.evaluate(_always_predicts(retina_network, 1))["nfr"] == 0.0


def test_held_out_sites_are_evaluated_on_all_their_samples(retina_federation, retina_network, tmp_path):
    import json
    import shutil

    root = tmp_path / "root"
    shutil.copytree(retina_federation, root)
    # site-3 held out: it never trains; the server scores the global model on all of its samples.
    (root / "site-3.json").rename(root / "holdout-1.json")
    held_out = json.loads((root / "holdout-1.json").read_text())
    labels = [entry["label"] for entry in held_out["training"] + held_out["test"]]
    evaluator = GlobalEvaluator(network=retina_network, data_root=str(root), device="cpu")
    result = evaluator.evaluate(_always_predicts(retina_network, 2))
    assert result["unseen_site_acc"] == {"holdout-1": pytest.approx(labels.count(2) / len(labels))}
    plain = GlobalEvaluator(network=retina_network, data_root=str(retina_federation), device="cpu")
    assert plain.evaluate(_always_predicts(retina_network, 2))["unseen_site_acc"] == {}


def test_the_server_evaluates_patch_by_patch_when_the_sites_do(retina_network):
    """The sites' ``task_args`` (a sliding window over whole volumes) reach the server's evaluator too; a bad
    option is named when the job is built, not at the first evaluation."""
    import pytest

    unet = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "num_classes": 3}
    evaluator = GlobalEvaluator(network=unet, task="segmentation", task_args={"sliding_window": {"roi_size": [16, 16, 16]}})
    assert evaluator.task.inferer is not None and list(evaluator.task.inferer.roi_size) == [16, 16, 16]
    assert GlobalEvaluator(network=unet, task="segmentation").task.inferer is None
    with pytest.raises(ValueError, match="sliding_window: unknown key"):
        GlobalEvaluator(network=unet, task="segmentation", task_args={"sliding_window": {"roi": [16, 16, 16]}})


def test_the_validation_list_is_scored_apart_from_the_test_list(retina_federation, retina_network, tmp_path):
    import json
    import shutil

    # A model that puts everything in class 0 scores the share of class 0 in each list: on the validation
    # list its own share, not the test list's (and the test list's flip memory is left alone).
    validation = json.loads((retina_federation / "global_val.json").read_text())["validation"]
    evaluator = GlobalEvaluator(network=retina_network, data_root=str(retina_federation), device="cpu")
    result = evaluator.evaluate(_always_predicts(retina_network, 0))
    assert result["val_accuracy"] == pytest.approx(sum(e["label"] == 0 for e in validation) / len(validation))
    # Without global_val.json there is no validation score (val_acc null; no best model is kept).
    root = tmp_path / "root"
    shutil.copytree(retina_federation, root)
    (root / "global_val.json").unlink()
    alone = GlobalEvaluator(network=retina_network, data_root=str(root), device="cpu")
    assert alone.evaluate(_always_predicts(retina_network, 0))["val_accuracy"] is None
