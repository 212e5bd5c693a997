"""Shared test fixtures: the real data sets in ``../shared/data`` (present in CI, absent in a user's clone)."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# torch picks its CPU kernels by the CPU's instruction set (oneDNN's convolutions, its own vectorized ops, MKL's
# matrix products), and the AVX-512 ones sum in another order than the AVX2 ones: on an AVX-512 CPU the golden
# runs' site-3 got 132 of 291 training samples right instead of 130, and the README demo printed another table.
# The golden fixtures and the demo table are AVX2 figures; these caps make them the same on both kinds of CPU
# (nothing changes on an AVX2 CPU). Set before torch is imported (a value already set wins), and inherited by
# every simulator, POC and lab process a test starts. docs/contributing.md has the measurements.
for _variable, _value in (("ONEDNN_MAX_CPU_ISA", "AVX2"), ("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_ENABLE_INSTRUCTIONS", "AVX2")):
    os.environ.setdefault(_variable, _value)

from fedkper_monai.cli import main  # noqa: E402  (after the caps, before torch loads)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
JOBS = Path(__file__).resolve().parents[1] / "jobs"
# The 3-site RetinaMNIST run every golden fixture (tests/system/fixtures/golden_*.jsonl) was recorded with.
GOLDEN_RUN = ("-n", "3", "-t", "3", "--rounds", "2", "--sample-fraction", "0.67", "--local-epochs", "1")


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


@pytest.fixture(scope="session")
def retina_federation(tmp_path_factory, retinamnist_npz) -> Path:
    """3 sites from the real RetinaMNIST train split, Dirichlet(0.5), seed 0 (skips without ../shared)."""
    out = tmp_path_factory.mktemp("retina") / "federation"
    code = main(["prepare", "medmnist", "--npz", str(retinamnist_npz), "--sites", "3", "--alpha", "0.5", "--seed", "0", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture
def retina_network() -> dict:
    """The network spec that fits the RetinaMNIST federation (RGB 28x28, 5 classes)."""
    return {"name": "reference_cnn", "spatial_dims": 2, "in_channels": 3, "num_classes": 5, "image_size": [28, 28]}


@pytest.fixture(scope="session")
def golden_run_args() -> list[str]:
    """The simulate options of the golden runs (``-n 3 -t 3 --rounds 2 --sample-fraction 0.67 --local-epochs 1``)."""
    return list(GOLDEN_RUN)


@dataclass(frozen=True)
class SimulatedRun:
    """A finished ``fedkper-monai simulate`` run: its workspace and what the command printed."""

    workspace: Path
    printed: str


@pytest.fixture(scope="session")
def golden_fedkper_run(tmp_path_factory, retina_federation) -> SimulatedRun:
    """``fedkper-monai simulate jobs/fedkper_medmnist`` with the golden options on the RetinaMNIST federation,
    run once per session (slow: FLARE's simulator) and shared by every test that reads a real FedKPer run:
    tests/system/test_simulation.py checks it against golden_fedkper_retina_3sites.jsonl, tests/bundle
    evaluates and exports its models. Read it, never write into it (copy what a test must change)."""
    workspace = tmp_path_factory.mktemp("golden_fedkper") / "ws"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["simulate", str(JOBS / "fedkper_medmnist"), "-w", str(workspace), "--data-root", str(retina_federation), *GOLDEN_RUN])
    assert code == 0, printed.getvalue()[-3000:]
    return SimulatedRun(workspace, printed.getvalue())
