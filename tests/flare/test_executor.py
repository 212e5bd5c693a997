"""FedKPerExecutor, the FLARE adapter of the site round, driven with FLARE's task shareables.

What a site computes is tested in ``tests/training/test_site.py``; here: that tasks and the site's report
translate both ways, and that FLARE's side of setup, site-local choices and abort holds.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import MetaKey
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from fedkper_monai.errors import DataError, FedKPerError
from fedkper_monai.flare.executor import FedKPerExecutor
from fedkper_monai.flare.local_choices import write_site_config
from fedkper_monai.flare.messages import (
    GLOBAL_VERSION_KEY,
    REFUSAL_HEADER,
    SITE_METRICS_KEY,
    VERSIONS_KEY,
    software_versions,
)
from fedkper_monai.flare.weights import to_numpy
from fedkper_monai.training import build_network
from fedkper_monai.training.site import CHECKPOINT_FILE, STATE_FILE


def _executor(root, job_root, network, algorithm="fedkper", local_dir=None, **kwargs) -> FedKPerExecutor:
    executor = FedKPerExecutor(data_root=str(root), algorithm=algorithm, network=network, local_epochs=1, batch_size=32, **kwargs)
    executor.setup("site-1", job_root, local_dir)  # what START_RUN does with FLARE's site name and folders
    return executor


def _global(network: dict, version: int, round_index: int, seed: int = 0) -> FLModel:
    torch.manual_seed(seed)
    params = to_numpy(build_network(**network).state_dict())
    return FLModel(params_type=ParamsType.FULL, params=params, current_round=round_index, meta={GLOBAL_VERSION_KEY: version})


def _run(executor: FedKPerExecutor, task: str, model: FLModel, signal: Signal | None = None):
    reply = executor.execute(task, FLModelUtils.to_shareable(model), FLContext(), signal or Signal())
    code = reply.get_return_code()
    return code if code and code != ReturnCode.OK else FLModelUtils.from_shareable(reply)


def test_train_translates_the_site_report_into_a_flmodel(retina_federation, tmp_path, retina_network):
    executor = _executor(retina_federation, tmp_path, retina_network)
    model = _global(retina_network, 0, 0)
    validated = _run(executor, "validate", model)
    result = _run(executor, "train", model)
    metrics = result.meta[SITE_METRICS_KEY]
    # FLARE's pre-train validation: the received model's figures travel with the train result.
    assert validated.metrics == result.meta[MetaKey.INITIAL_METRICS] == result.metrics
    assert validated.metrics["global_on_local_acc"] == metrics["global_on_local_acc"]
    assert result.meta["score"] == metrics["score"] and result.meta["num_samples"] == executor.site.num_train
    assert result.params_type == ParamsType.FULL and set(result.params) == set(model.params)
    assert all(isinstance(value, np.ndarray) for value in result.params.values())
    assert any(not np.allclose(result.params[k], model.params[k]) for k in model.params), "training changed the weights"
    assert (tmp_path / CHECKPOINT_FILE).exists() and (tmp_path / STATE_FILE).exists()


def test_an_aborted_task_returns_task_aborted(retina_federation, tmp_path, retina_network):
    executor = _executor(retina_federation, tmp_path, retina_network)
    signal = Signal()
    signal.trigger("test")
    assert _run(executor, "train", _global(retina_network, 0, 0), signal) == ReturnCode.TASK_ABORTED
    assert not (tmp_path / CHECKPOINT_FILE).exists(), "an aborted round keeps no personalized model"


def test_bad_tasks_are_refused_by_code(retina_federation, tmp_path, retina_network):
    executor = _executor(retina_federation, tmp_path, retina_network)
    metrics_only = FLModel(metrics={"x": 1.0}, current_round=0)
    assert _run(executor, "train", metrics_only) == ReturnCode.BAD_TASK_DATA
    assert _run(executor, "validate", metrics_only) == ReturnCode.BAD_TASK_DATA
    assert _run(executor, "submit_model", _global(retina_network, 0, 0)) == ReturnCode.TASK_UNKNOWN


def test_a_task_from_a_server_of_other_versions_is_refused_naming_both(retina_federation, tmp_path, retina_network):
    executor = _executor(retina_federation, tmp_path, retina_network)
    ours = software_versions()
    model = _global(retina_network, 0, 0)
    model.meta[VERSIONS_KEY] = {**ours, "fedkper-monai": "0.0.9"}
    for task in ("train", "validate"):
        reply = executor.execute(task, FLModelUtils.to_shareable(model), FLContext(), Signal())
        assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
        refusal = reply.get_header(REFUSAL_HEADER)
        assert f"site-1 runs fedkper-monai {ours['fedkper-monai']} and nvflare {ours['nvflare']}" in refusal, refusal
        assert f"the server fedkper-monai 0.0.9 and nvflare {ours['nvflare']}" in refusal, refusal
    assert not (tmp_path / CHECKPOINT_FILE).exists(), "a refused task trains nothing"
    model.meta[VERSIONS_KEY] = ours  # the same versions: the task runs, and the result names them
    result = _run(executor, "train", model)
    assert result.meta[VERSIONS_KEY] == ours and _run(executor, "validate", model).meta[VERSIONS_KEY] == ours


def test_missing_site_datalist_is_a_clear_error(tmp_path, retina_network):
    executor = FedKPerExecutor(data_root=str(tmp_path), network=retina_network)
    with pytest.raises(FedKPerError, match="site-9.json"):
        executor.setup("site-9", tmp_path)


def test_an_unknown_executor_argument_is_refused_by_name(retina_network):
    with pytest.raises(FedKPerError, match="unknown setting.*lr_decay"):
        FedKPerExecutor(network=retina_network, lr_decay=0.9)


def test_setup_happens_once(retina_federation, tmp_path, retina_network):
    executor = _executor(retina_federation, tmp_path, retina_network)
    _run(executor, "train", _global(retina_network, 0, 0))
    site = executor.site
    executor.setup("site-1", tmp_path)
    assert executor.site is site


class _Workspace:
    def __init__(self, root):
        self.root = root

    def get_run_dir(self, job_id):
        return str(self.root / f"run_{job_id}")

    def get_site_config_dir(self):
        return str(self.root / "local")

    def get_root_dir(self):
        return str(self.root)


class _Engine:
    def __init__(self, root):
        self.workspace = _Workspace(root)

    def get_workspace(self):
        return self.workspace

    def get_component(self, component_id):
        return None

    def fire_event(self, event_type, fl_ctx):
        pass


class _Context(FLContext):
    def __init__(self, root):
        super().__init__()
        self.engine = _Engine(root)

    def get_engine(self):
        return self.engine

    def get_identity_name(self, default=""):
        return "site-2"

    def get_job_id(self):
        return "job1"


def test_start_run_reads_the_sites_own_choices_over_the_jobs(retina_federation, tmp_path, retina_network):
    # The job names no data (or other data); the site's local/fedkper_site.json decides, written by site-config.
    site_dir = tmp_path / "site-2"
    (site_dir / "local").mkdir(parents=True)
    write_site_config(site_dir, retina_federation, device="cpu")
    executor = FedKPerExecutor(data_root=str(tmp_path / "elsewhere"), network=retina_network, local_epochs=1, device="cuda")
    executor.handle_event(EventType.START_RUN, _Context(site_dir))
    assert executor.site is not None and executor.site.datalist_path == retina_federation / "site-2.json"
    assert executor.site.config.device == "cpu"


def test_a_failed_start_is_reported_again_by_the_first_task(tmp_path, retina_network):
    executor = FedKPerExecutor(data_root=str(tmp_path), network=retina_network)
    executor.handle_event(EventType.START_RUN, _Context(tmp_path))
    assert executor.site is None
    assert _run(executor, "validate", _global(retina_network, 0, 0)) == ReturnCode.EXECUTION_EXCEPTION


def test_site_config_refuses_what_does_not_exist(tmp_path, retina_federation):
    with pytest.raises(DataError, match="neither startup/ nor local/"):
        write_site_config(tmp_path, retina_federation)
    (tmp_path / "local").mkdir()
    with pytest.raises(DataError, match="no such folder"):
        write_site_config(tmp_path, tmp_path / "missing")
    with pytest.raises(DataError, match="no such datalist"):
        write_site_config(tmp_path, retina_federation, datalist=tmp_path / "nope.json")
    with pytest.raises(DataError, match="unknown device"):
        write_site_config(tmp_path, retina_federation, device="tpu")
    written = json.loads(write_site_config(tmp_path, retina_federation, datalist=retina_federation / "site-3.json").read_text())
    assert written == {"data_root": str(retina_federation.resolve()), "datalist": str((retina_federation / "site-3.json").resolve()), "device": None}


def test_flare_warns_of_nothing_deprecated_when_it_builds_the_site(retina_network):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FedKPerExecutor(network=retina_network)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning) or "deprecat" in str(w.message).lower()]
