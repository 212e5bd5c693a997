"""What a real site sends is known to the metrics schema: written, or dropped by name (strict in tests)."""

from __future__ import annotations

import pytest
import torch
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from fedkper_monai.flare.executor import FedKPerExecutor
from fedkper_monai.flare.messages import GLOBAL_VERSION_KEY, SITE_METRICS_KEY
from fedkper_monai.flare.metrics import RunBook
from fedkper_monai.flare.weights import to_numpy
from fedkper_monai.metrics_schema import check_site_fields
from fedkper_monai.training import build_network


# FedKPer in the fast tests; the other strategies' diagnostics (proximal, ntd, Ditto's two models) in the slow ones.
@pytest.mark.parametrize("algorithm", ["fedkper", *(pytest.param(name, marks=pytest.mark.slow) for name in ("fedprox", "fedntd", "ditto"))])
def test_every_field_a_site_sends_is_in_the_schema(retina_federation, tmp_path, retina_network, algorithm):
    executor = FedKPerExecutor(data_root=str(retina_federation), algorithm=algorithm, network=retina_network,
                               local_epochs=1, batch_size=32)
    executor.setup("site-1", tmp_path)  # what FLARE's START_RUN does
    torch.manual_seed(0)
    model = FLModel(params_type=ParamsType.FULL, params=to_numpy(build_network(**retina_network).state_dict()),
                    current_round=0, meta={GLOBAL_VERSION_KEY: 0})
    def run(task: str) -> FLModel:
        return FLModelUtils.from_shareable(executor.execute(task, FLModelUtils.to_shareable(model), FLContext(), Signal()))

    validated = run("validate").metrics
    trained = run("train").meta[SITE_METRICS_KEY]
    check_site_fields(validated, "validate")
    check_site_fields(trained, "train")
    book = RunBook(strict=True)
    book.site_train_line(0, "site-1", dict(trained, bytes_received=1), weight=1.0)
    book.site_validate_line(0, "site-1", validated)
