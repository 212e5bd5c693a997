"""A site that was missing from a continued job comes back (issue 24 item 3): its state lies in an older job
folder of the resume chain (it had no folder of the job in between), and the real FedKPerExecutor, started by
FLARE's START_RUN in a real FLARE client workspace, continues from it. Real RetinaMNIST site, real network."""

from __future__ import annotations

import numpy as np
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.apis.workspace import Workspace
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from fedkper_monai.flare.executor import FedKPerExecutor
from fedkper_monai.flare.messages import GLOBAL_VERSION_KEY, RESUME_CHAIN_KEY
from fedkper_monai.flare.weights import to_numpy
from fedkper_monai.training import build_network
from fedkper_monai.training.site import CHECKPOINT_FILE, STATE_FILE


class _ClientEngine:
    """What the executor asks of FLARE's client engine at START_RUN: the site's workspace, no components."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def get_workspace(self) -> Workspace:
        return self.workspace

    def get_component(self, component_id: str) -> None:
        return None


def _started(root, data_root, network, job_id: str) -> tuple[FedKPerExecutor, FLContext]:
    """site-3's executor of job ``job_id``, set up by START_RUN as FLARE does."""
    context = FLContext()
    context.set_prop(ReservedKey.ENGINE, _ClientEngine(Workspace(str(root), "site-3")), private=True, sticky=False)
    context.set_prop(ReservedKey.IDENTITY_NAME, "site-3", private=False, sticky=False)
    context.set_prop(ReservedKey.RUN_NUM, job_id, private=False, sticky=False)
    executor = FedKPerExecutor(data_root=str(data_root), algorithm="fedkper", network=network, local_epochs=1, batch_size=32)
    executor.handle_event(EventType.START_RUN, context)
    return executor, context


def _task(network: dict, round_index: int, chain: list[str] | None = None):
    torch.manual_seed(0)
    meta = {GLOBAL_VERSION_KEY: round_index, **({RESUME_CHAIN_KEY: chain} if chain else {})}
    model = FLModel(params_type=ParamsType.FULL, params=to_numpy(build_network(**network).state_dict()), current_round=round_index, meta=meta)
    return FLModelUtils.to_shareable(model)


def test_a_returning_site_continues_from_its_state_in_an_older_job_of_the_chain(retina_federation, tmp_path, retina_network):
    root = tmp_path / "site-3"
    for folder in ("startup", "local"):
        (root / folder).mkdir(parents=True)
    first, context = _started(root, retina_federation, retina_network, "job-a")
    first.execute("train", _task(retina_network, 0), context, Signal())
    trained = torch.load(root / "job-a" / CHECKPOINT_FILE, weights_only=True)
    # job-b ran without site-3 (not connected): site-3 has no folder of it. job-c, with site-3 back, names both.
    returned, context = _started(root, retina_federation, retina_network, "job-c")
    assert not returned.site.restored
    reply = returned.execute("validate", _task(retina_network, 2, chain=["job-b", "job-a"]), context, Signal())
    assert FLModelUtils.from_shareable(reply).metrics["global_on_local_acc"] is not None
    assert returned.site.restored and (root / "job-c" / STATE_FILE).is_file()
    # The flip memory of its personalized model is job-a's (its NFR goes on from there), and so is the model.
    assert returned.site.trackers["personalized"].state_dict() == first.site.trackers["personalized"].state_dict()
    for name, value in returned.site.model.state_dict().items():
        assert np.array_equal(value.cpu().numpy(), trained[name].cpu().numpy()), f"{name} is not the personalized model job-a left"
    assert not (root / "job-b").exists()
