"""FedKPerLearner, the FLARE adapter of the site round, driven as FLARE's ModelLearnerExecutor drives it.

What a site computes is tested in ``tests/training/test_site.py``; here: that FLModel and the site's report
translate both ways, and that FLARE's side of setup and abort holds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.learner import GLOBAL_VERSION_KEY, SITE_METRICS_KEY, FedKPerLearner
from fedkper_monai.flare.weights import to_numpy
from fedkper_monai.training import build_network
from fedkper_monai.training.site import CHECKPOINT_FILE, STATE_FILE


def _learner(root, job_root, network, algorithm="fedkper", **kwargs) -> FedKPerLearner:
    learner = FedKPerLearner(data_root=str(root), algorithm=algorithm, network=network, local_epochs=1, batch_size=32, **kwargs)
    # What FLARE's ModelLearnerExecutor sets before the first task.
    learner.site_name = "site-1"
    learner.job_root = str(job_root)
    learner.initialize()
    return learner


def _global(network: dict, version: int, round_index: int, seed: int = 0) -> FLModel:
    torch.manual_seed(seed)
    params = to_numpy(build_network(**network).state_dict())
    return FLModel(params_type=ParamsType.FULL, params=params, current_round=round_index, meta={GLOBAL_VERSION_KEY: version})


def test_train_translates_the_site_report_into_a_flmodel(retina_federation, tmp_path, retina_network):
    learner = _learner(retina_federation, tmp_path, retina_network)
    model = _global(retina_network, 0, 0)
    pre = learner.validate(model)  # FLARE's pre-train validation
    result = learner.train(model)
    metrics = result.meta[SITE_METRICS_KEY]
    assert pre.metrics["global_on_local_acc"] == metrics["global_on_local_acc"]
    assert result.meta["score"] == metrics["score"] and result.meta["num_samples"] == learner.site.num_train
    assert result.params_type == ParamsType.FULL and set(result.params) == set(model.params)
    assert all(isinstance(value, np.ndarray) for value in result.params.values())
    assert any(not np.allclose(result.params[k], model.params[k]) for k in model.params), "training changed the weights"
    assert (tmp_path / CHECKPOINT_FILE).exists() and (tmp_path / STATE_FILE).exists()


def test_an_aborted_task_returns_task_aborted(retina_federation, tmp_path, retina_network):
    learner = _learner(retina_federation, tmp_path, retina_network)
    learner.abort_signal = Signal()
    learner.abort_signal.trigger("test")
    assert learner.train(_global(retina_network, 0, 0)) == ReturnCode.TASK_ABORTED
    assert not (tmp_path / CHECKPOINT_FILE).exists(), "an aborted round keeps no personalized model"


def test_empty_task_data_is_bad_task_data(retina_federation, tmp_path, retina_network):
    learner = _learner(retina_federation, tmp_path, retina_network)
    empty = FLModel(params_type=ParamsType.FULL, params={}, current_round=0)
    assert learner.train(empty) == ReturnCode.BAD_TASK_DATA
    assert learner.validate(empty) == ReturnCode.BAD_TASK_DATA


def test_missing_site_datalist_is_a_clear_error(tmp_path, retina_network):
    learner = FedKPerLearner(data_root=str(tmp_path), network=retina_network)
    learner.site_name = "site-9"
    learner.job_root = str(tmp_path)
    with pytest.raises(FedKPerError, match="site-9.json"):
        learner.initialize()


def test_an_unknown_learner_argument_is_refused_by_name(retina_network):
    with pytest.raises(FedKPerError, match="unknown setting.*lr_decay"):
        FedKPerLearner(network=retina_network, lr_decay=0.9)


def test_setup_happens_once(retina_federation, tmp_path, retina_network):
    # The learner sets itself up at FLARE's START_RUN; the executor's later initialize() must not reset it.
    learner = _learner(retina_federation, tmp_path, retina_network)
    learner.train(_global(retina_network, 0, 0))
    site = learner.site
    learner.initialize()
    assert learner.site is site
