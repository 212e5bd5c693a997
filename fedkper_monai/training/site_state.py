"""A site's state on disk, so that a site process that stops continues where it stopped.

What is kept in the site's state folder (its FLARE run folder):

- ``fedkper_site_state.json``: the flip memories of each role, the last global evaluation (so one global
  model is never counted twice in the flips) and the state the round in progress started from.
- ``personalized_model.pt``: the personalized model after the last round (also the run's published model).
- ``best_personalized_model.pt``: the personalized model that scored best on the site's validation part
  (only with one: :mod:`fedkper_monai.training.site_selection`); its round and score are in the JSON state.
- ``round_start_model.pt``: the own model as the round in progress received it, for strategies that keep
  their own model across rounds (Ditto, local-only). A server that restarts sends that round again; the
  site then trains it from this start, not a second time on top of its first attempt.

A resumed run is a new FLARE job: :meth:`SiteState.adopt` copies the files of the stopped job's folder
into the new one before the site reads them.
"""

from __future__ import annotations

import io
import json
import shutil
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fedkper_monai.errors import FedKPerError
from fedkper_monai.io import atomic_write_bytes, atomic_write_json

__all__ = ["STATE_FILE", "CHECKPOINT_FILE", "BEST_MODEL_FILE", "ROUND_START_FILE", "SiteState", "round_seed"]

STATE_FILE = "fedkper_site_state.json"
CHECKPOINT_FILE = "personalized_model.pt"
BEST_MODEL_FILE = "best_personalized_model.pt"
ROUND_START_FILE = "round_start_model.pt"
# The JSON state last: its presence is what marks a folder as holding a site's state.
_FILES = (CHECKPOINT_FILE, BEST_MODEL_FILE, ROUND_START_FILE, STATE_FILE)


def round_seed(seed: int, round_index: int, site: str) -> int:
    """The seed of one site's training in one round (shuffling, random transforms, dropout).

    It depends only on (seed, round, site), never on what the process did before: a site rebuilt from
    disk between tasks (FLARE's simulator with fewer threads than sites) or after a restart trains
    exactly as one that ran the whole job in one process.
    """
    sequence = np.random.SeedSequence([int(seed), int(round_index), zlib.crc32(site.encode("utf-8"))])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))


class SiteState:
    """Reads and writes the files of one site's state folder (``None``: nothing is kept)."""

    def __init__(self, state_dir: str | Path | None) -> None:
        self.dir = Path(state_dir) if state_dir is not None else None

    @property
    def kept(self) -> bool:
        """Whether this site keeps state on disk."""
        return self.dir is not None

    def read(self) -> dict[str, Any] | None:
        """The JSON state, or None when there is none yet."""
        if self.dir is None or not (self.dir / STATE_FILE).exists():
            return None
        path = self.dir / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise FedKPerError(f"{path}: unreadable site state ({error}); remove it to start this site afresh") from error
        if not isinstance(state, dict) or not isinstance(state.get("trackers"), dict):
            raise FedKPerError(f"{path}: field 'trackers' is missing; remove the file to start this site afresh")
        return state

    def write(self, state: Mapping[str, Any]) -> None:
        """Replace the JSON state (atomically)."""
        if self.dir is not None:
            atomic_write_json(self.dir / STATE_FILE, dict(state))

    def read_model(self, name: str, device: torch.device) -> dict[str, torch.Tensor] | None:
        """A saved state dict (``CHECKPOINT_FILE`` or ``ROUND_START_FILE``), or None."""
        if self.dir is None or not (self.dir / name).exists():
            return None
        return torch.load(self.dir / name, map_location=device, weights_only=True)

    def write_model(self, name: str, weights: Mapping[str, torch.Tensor]) -> None:
        """Save a state dict (atomically)."""
        if self.dir is None:
            return
        buffer = io.BytesIO()
        torch.save(dict(weights), buffer)
        atomic_write_bytes(self.dir / name, buffer.getvalue())

    def adopt(self, previous: str | Path) -> bool:
        """Take over the state of a stopped job's site folder ``previous``; True when there was one to take.

        Only into a folder without state of its own: a job that already trained here keeps what it has.
        """
        source = Path(previous)
        if self.dir is None or (self.dir / STATE_FILE).exists() or not (source / STATE_FILE).is_file():
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in _FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, self.dir / name)
        return True
