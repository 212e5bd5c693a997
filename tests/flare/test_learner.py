"""FedKPerLearner run directly (as FLARE's ModelLearnerExecutor drives it) on real RetinaMNIST sites."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.learner import CHECKPOINT_FILE, GLOBAL_VERSION_KEY, SITE_METRICS_KEY, STATE_FILE, FedKPerLearner
from fedkper_monai.flare.weights import to_numpy
from fedkper_monai.training import build_network



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


def test_train_reports_score_metrics_and_saves_state(retina_federation, tmp_path, retina_network):
    learner = _learner(retina_federation, tmp_path, retina_network)
    model = _global(retina_network, 0, 0)
    pre = learner.validate(model)  # FLARE's pre-train validation
    result = learner.train(model)
    metrics = result.meta[SITE_METRICS_KEY]
    assert pre.metrics["global_on_local_acc"] == metrics["global_on_local_acc"]
    assert 0.0 <= result.meta["score"] <= 1.0 + 1e-6 and result.meta["num_samples"] == learner.num_train
    for key in ("personalized_acc", "personalized_balanced_acc", "nfr_personalized", "train_acc", "nfr_global_on_local"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert set(result.params) == set(model.params)
    assert any(not np.allclose(result.params[k], model.params[k]) for k in model.params), "training changed the weights"
    assert (tmp_path / CHECKPOINT_FILE).exists() and (tmp_path / STATE_FILE).exists()
    # Only scalars leave the site.
    assert all(isinstance(value, (int, float)) for value in metrics.values())


def test_flip_memory_and_personalized_model_survive_a_restart(retina_federation, tmp_path, retina_network):
    first = _learner(retina_federation, tmp_path, retina_network)
    update = first.train(_global(retina_network, 0, 0, seed=0))
    first.validate(FLModel(params_type=ParamsType.FULL, params=update.params, current_round=0, meta={GLOBAL_VERSION_KEY: 1}))
    trained = first.train(_global(retina_network, 2, 1, seed=1)).meta[SITE_METRICS_KEY]
    assert trained["nfr_global_on_local"] > 0, "a trained model, then a random one: some samples flip"
    state = json.loads((tmp_path / STATE_FILE).read_text())
    restarted = _learner(retina_federation, tmp_path, retina_network, algorithm="local")
    for role, tracker in restarted.trackers.items():
        assert tracker.state_dict() == state["trackers"][role]
        assert len(tracker) == restarted.local_test_size
    # FLARE's simulator restarts site processes between tasks when it runs fewer threads than sites: the
    # restarted site must report the same global model's metrics, not re-count it (which gives NFR 0).
    again = restarted.validate(_global(retina_network, 2, 1, seed=1)).metrics
    assert again["nfr_global_on_local"] == trained["nfr_global_on_local"]
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    for name, value in restarted.model.state_dict().items():
        assert torch.equal(value, saved[name])


def test_local_only_keeps_its_own_model(retina_federation, tmp_path, retina_network):
    learner = _learner(retina_federation, tmp_path, retina_network, algorithm="local")
    learner.train(_global(retina_network, 0, 0, seed=0))
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.train(_global(retina_network, 1, 1, seed=1))  # different global weights must not replace the site's model
    after = learner.model.state_dict()
    drift = max(float((after[k].float() - before[k].float()).abs().max()) for k in before)
    other = _global(retina_network, 1, 1, seed=1).params
    distance_to_global = max(float(np.abs(after[k].numpy() - other[k]).max()) for k in other)
    assert drift < distance_to_global


def test_ditto_uploads_a_global_update_and_keeps_a_personal_model(retina_federation, tmp_path, retina_network):
    learner = _learner(retina_federation, tmp_path, retina_network, algorithm="ditto", algorithm_args={"mu": 0.1})
    result = learner.train(_global(retina_network, 0, 0))
    personal = to_numpy(learner.model.state_dict())
    assert any(not np.allclose(result.params[k], personal[k]) for k in personal), "uploaded copy differs from the personal model"


def test_missing_site_datalist_is_a_clear_error(tmp_path, retina_network):
    learner = FedKPerLearner(data_root=str(tmp_path), network=retina_network)
    learner.site_name = "site-9"
    learner.job_root = str(tmp_path)
    with pytest.raises(FedKPerError, match="site-9.json"):
        learner.initialize()


def test_network_class_count_must_match_the_datalist(retina_federation, tmp_path, retina_network):
    learner = FedKPerLearner(data_root=str(retina_federation), network={**retina_network, "num_classes": 8})
    learner.site_name = "site-1"
    learner.job_root = str(tmp_path)
    with pytest.raises(FedKPerError, match="num_classes 5 differs"):
        learner.initialize()


def test_setup_happens_once(retina_federation, tmp_path, retina_network):
    # The learner sets itself up at FLARE's START_RUN; the executor's later initialize() must not reset it.
    learner = _learner(retina_federation, tmp_path, retina_network)
    learner.train(_global(retina_network, 0, 0))
    model, trackers = learner.model, learner.trackers
    learner.initialize()
    assert learner.model is model and learner.trackers is trackers
