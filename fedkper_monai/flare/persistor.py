"""Server-side persistor: builds the initial global model from the job's network spec and saves each new one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import torch
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor

from fedkper_monai.flare.weights import to_numpy, to_torch
from fedkper_monai.io import atomic_write_bytes
from fedkper_monai.job_fields import check_persistor_args

__all__ = ["NetworkPersistor", "BEST_MODEL_FILE"]

# The global model that scored best on the server's validation list, beside the latest (controller: best_val_round).
BEST_MODEL_FILE = "best_global_model.pt"


class NetworkPersistor(ModelPersistor):
    """Initial weights from :func:`fedkper_monai.training.build_network` under a seed; saves to the run folder.

    Args:
        network: keyword arguments of ``build_network`` (``name``, ``spatial_dims``, ``in_channels``,
            ``num_classes``, ``image_size``).
        seed: torch seed for the initial weights, so every algorithm starts from the same model.
        save_name: file name of the saved global model inside the server's run folder.

    If ``save_name`` already exists in the run folder (a restarted server), training resumes from it.
    :meth:`save_best_model` writes :data:`BEST_MODEL_FILE` beside it, in the same format.
    """

    def __init__(self, network: dict[str, Any], seed: int = 0, save_name: str = "global_model.pt") -> None:
        super().__init__()
        self.network = dict(network)
        # A job sets this: a bare file name only, so the model is written (and resumed) inside the run folder.
        if not isinstance(save_name, str) or save_name in ("", ".", "..") or Path(save_name).name != save_name:
            raise ValueError(f"save_name must be a file name inside the run folder, got {save_name!r}")
        self.save_name = save_name
        # The network spec is a job's, as at the sites: only what that network takes, each of its type.
        check_persistor_args({"network": self.network, "seed": seed, "save_name": save_name}, source="persistor args")
        self.seed = int(seed)

    def _save_path(self, fl_ctx: FLContext) -> Path:
        workspace = fl_ctx.get_engine().get_workspace()
        return Path(workspace.get_run_dir(fl_ctx.get_job_id())) / self.save_name

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The seeded initial state dict of the configured network."""
        from fedkper_monai.training import build_network

        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            model = build_network(**self.network)
        finally:
            torch.random.set_rng_state(generator_state)
        return model.state_dict()

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        path = self._save_path(fl_ctx)
        if path.exists():
            self.log_info(fl_ctx, f"resuming from saved global model {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            state = self.initial_state()
        return make_model_learnable(weights=to_numpy(state), meta_props={})

    def save_model(self, model: ModelLearnable, fl_ctx: FLContext) -> None:
        _save_state_dict(self._save_path(fl_ctx), model["weights"])

    def save_best_model(self, weights: Mapping[str, Any], fl_ctx: FLContext) -> None:
        """Keep ``weights`` (numpy arrays, a global model) as :data:`BEST_MODEL_FILE` in the run folder."""
        _save_state_dict(self._save_path(fl_ctx).with_name(BEST_MODEL_FILE), weights)


def _save_state_dict(path: Path, weights: Mapping[str, Any]) -> None:
    """A torch state dict file, written atomically (a stop mid-write leaves the previous file whole)."""
    buffer = io.BytesIO()
    torch.save(to_torch(weights), buffer)
    atomic_write_bytes(path, buffer.getvalue())
