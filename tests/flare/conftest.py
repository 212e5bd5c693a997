"""A small real federation (RetinaMNIST from ../shared/data) shared by the FLARE tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkper_monai.cli import main


@pytest.fixture(scope="session")
def retina_federation(tmp_path_factory, retinamnist_npz) -> Path:
    """3 sites from the real RetinaMNIST train split, Dirichlet(0.5), seed 0 (skips without ../shared)."""
    npz = retinamnist_npz
    out = tmp_path_factory.mktemp("retina") / "federation"
    code = main(["prepare", "medmnist", "--npz", str(npz), "--sites", "3", "--alpha", "0.5", "--seed", "0", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture
def retina_network() -> dict:
    """The network spec that fits the RetinaMNIST federation (RGB 28x28, 5 classes)."""
    return {"name": "reference_cnn", "spatial_dims": 2, "in_channels": 3, "num_classes": 5, "image_size": [28, 28]}
