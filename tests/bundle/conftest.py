"""Run folders for the bundle tests: a laid-out run (fast, no FLARE) and the session's real 2-round simulation (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_helpers import RETINA_NETWORK

from fedkper_monai.data import load_datalist
from fedkper_monai.training.networks import build_network


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def lay_out_run(run: Path, federation: Path, network: dict, sites=("site-1",), seed: int = 0) -> Path:
    """The files a `fedkper-monai simulate` run leaves, with seeded (untrained) models."""
    names = load_datalist(federation / "site-1.json").class_names
    job = run / "server" / "simulate_job"
    header = {"run": {"algorithm": "fedkper", "seed": seed, "num_classes": network["num_classes"], "class_names": names, "network": network["name"]}}
    job.mkdir(parents=True, exist_ok=True)
    (job / "metrics.jsonl").write_text(json.dumps(header) + "\n")
    torch.manual_seed(seed)
    torch.save(build_network(**network).state_dict(), job / "global_model.pt")
    server = {"components": [
        {"id": "persistor", "path": "fedkper_monai.flare.persistor.NetworkPersistor", "args": {"network": network}},
        {"id": "global_evaluator", "path": "fedkper_monai.flare.evaluator.GlobalEvaluator", "args": {"network": network, "transforms": "classification_2d"}},
    ]}
    _write_json(job / "app_server" / "config" / "config_fed_server.json", server)
    for index, site in enumerate(sites):
        site_job = run / site / "simulate_job"
        site_job.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed + 1 + index)
        torch.save(build_network(**network).state_dict(), site_job / "personalized_model.pt")
        client = {"executors": [{"tasks": ["train", "validate"], "executor": {"path": "fedkper_monai.flare.executor.FedKPerExecutor", "args": {"network": network, "transforms": "classification_2d"}}}]}
        _write_json(site_job / f"app_{site}" / "config" / "config_fed_client.json", client)
    return run


@pytest.fixture(scope="session")
def laid_out_run(tmp_path_factory, retina_federation) -> Path:
    """A RetinaMNIST run folder (global model, site-1's personalized model) without running FLARE."""
    return lay_out_run(tmp_path_factory.mktemp("run") / "ws", retina_federation, RETINA_NETWORK)


@pytest.fixture
def simulated_run(golden_fedkper_run) -> Path:
    """The workspace of the real 2-round FedKPer simulation on 3 RetinaMNIST sites that tests/conftest.py runs
    once per session with the golden options (slow); site-2 and site-3 trained in both rounds, site-1 in none."""
    return golden_fedkper_run.workspace


@pytest.fixture
def run_layout():
    """:func:`lay_out_run` for a test (importing ``conftest`` by name would get whichever conftest pytest loaded last)."""
    return lay_out_run
