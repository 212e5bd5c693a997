"""Shared test fixtures: the real data sets in ``../shared/data`` (present in CI, absent in a user's clone)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """Path of a file under ``../shared/data``; skips the test with the reason when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not found: the real data sets live in ../shared/data beside the project (present in CI)")
    return path


@pytest.fixture(scope="session")
def retinamnist_npz() -> Path:
    return shared_file("medmnist/retinamnist.npz")


@pytest.fixture(scope="session")
def brain_tumor_28_npz() -> Path:
    return shared_file("brain_tumor_mri/brain_tumor_mri_28.npz")


@pytest.fixture(scope="session")
def pneumoniamnist_npz() -> Path:
    return shared_file("medmnist/pneumoniamnist.npz")
