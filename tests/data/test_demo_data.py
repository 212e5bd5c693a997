"""Built-in synthetic demo data: deterministic, idempotent, safe under concurrent site processes, learnable."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from fedkper_monai.cli import main
from fedkper_monai.data import ensure_demo_data, load_datalist
from fedkper_monai.data.demo import DEMO_MARKER, generate_demo_arrays
from fedkper_monai.errors import DataError


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _build(root: str) -> str:
    return str(ensure_demo_data(root, num_sites=3, seed=5))


def test_demo_is_deterministic_idempotent_and_concurrency_safe(tmp_path):
    roots = [str(tmp_path / "shared")] * 3
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_build, roots)
    root = tmp_path / "shared"
    assert results == [str(root)] * 3
    assert (root / DEMO_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no staging folder left behind
    first = _tree_digest(root)
    assert ensure_demo_data(root, num_sites=3, seed=5) == root and _tree_digest(root) == first
    assert _tree_digest(ensure_demo_data(tmp_path / "other", num_sites=3, seed=5)) == first

    sites = [load_datalist(root / f"site-{k}.json") for k in (1, 2, 3)]
    assert all(s.num_classes == 8 and s.image_size == [28, 28] and s.training for s in sites)
    assert sum(len(s.training) + len(s.test) for s in sites) == 2400
    assert len(load_datalist(root / "global_test.json").test) == 800

    with pytest.raises(DataError, match="made with"):
        ensure_demo_data(root, num_sites=4, seed=5)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="holds no complete demo data"):
        ensure_demo_data(tmp_path / "foreign")


def test_demo_task_is_learnable_but_not_trivial():
    arrays = generate_demo_arrays(seed=0)
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    assert x_train.shape == (2400, 28, 28) and x_train.dtype == np.uint8 and np.unique(y_train).size == 8

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x[:, None], dtype=torch.float32) / 127.5 - 1.0

    def train(model: torch.nn.Module, epochs: int) -> float:
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        x, y = images(x_train), torch.as_tensor(y_train)
        for _ in range(epochs):
            order = torch.randperm(len(x))
            for start in range(0, len(x), 64):
                batch = order[start : start + 64]
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
        with torch.no_grad():
            return float((model(images(x_test)).argmax(1).numpy() == y_test).mean())

    torch.manual_seed(0)
    nn = torch.nn
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 8),
    )
    linear = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 8))
    # Learnable: a small CNN gets well above chance (0.125) in a few epochs. Not trivial: random position
    # and polarity defeat a linear model on raw pixels.
    assert train(cnn, 5) > 0.45
    assert train(linear, 5) < 0.3


def test_cli_prepare_demo_and_help(tmp_path, capsys):
    assert main(["prepare", "demo", "--sites", "2", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    assert "synthetic" in capsys.readouterr().out
    for source in ("medmnist", "folders", "manifest", "demo"):
        with pytest.raises(SystemExit):
            main(["prepare", source, "--help"])
        assert "example" in capsys.readouterr().out
