"""Federate a MONAI bundle: network_def and preprocessing from the site's own bundle, FedKPer for the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedkper_monai.site_bundle import BUNDLE_ROOT_ENV
from fedkper_monai.cli import main
from fedkper_monai.errors import FedKPerError
from fedkper_monai.training.networks import build_network
from fedkper_monai.training.site import Site, SiteConfig

JOBS = Path(__file__).resolve().parents[2] / "jobs"
BUNDLE_NETWORK = {"name": "bundle", "spatial_dims": 2, "in_channels": 3, "num_classes": 5, "image_size": [28, 28]}


def make_bundle(folder: Path, num_classes: int = 5) -> Path:
    """What a MONAI user does: `python -m monai.bundle init_bundle`, then fill in a network."""
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "init_bundle", str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    config_path = folder / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["network_def"] = {"_target_": "monai.networks.nets.resnet10", "spatial_dims": 2, "n_input_channels": 3, "num_classes": num_classes}
    config["device"] = "$torch.device('cpu')"
    config_path.write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def user_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("user") / "my_bundle")


def test_network_and_preprocessing_come_from_the_local_bundle(user_bundle, retina_federation, monkeypatch, tmp_path):
    monkeypatch.setenv(BUNDLE_ROOT_ENV, str(user_bundle))
    network = build_network(**BUNDLE_NETWORK)
    assert type(network).__name__ == "ResNet"
    config = SiteConfig(network=BUNDLE_NETWORK, transforms="bundle", local_epochs=1, device="cpu")
    site = Site("site-1", retina_federation / "site-1.json", config, state_dir=tmp_path)
    report = site.train_round(site.model.state_dict(), round_index=0, version=0)
    assert 0 <= report.score <= 1 and report.num_samples == site.num_train
    assert 0 <= report.metrics["personalized_acc"] <= 1 and (tmp_path / "personalized_model.pt").is_file()


def test_a_job_cannot_name_a_bundle_path(user_bundle, monkeypatch):
    monkeypatch.setenv(BUNDLE_ROOT_ENV, str(user_bundle))
    from fedkper_monai.site_bundle import build_bundle_network

    with pytest.raises(FedKPerError, match="may not name a bundle"):
        build_bundle_network(**{k: v for k, v in BUNDLE_NETWORK.items() if k != "name"}, bundle_root="/tmp/evil")
    with pytest.raises(TypeError):  # build_network's spec has no place for a path at all
        build_network(**BUNDLE_NETWORK, bundle_root=str(user_bundle))


def test_bundle_errors(user_bundle, tmp_path, monkeypatch):
    monkeypatch.delenv(BUNDLE_ROOT_ENV, raising=False)
    with pytest.raises(FedKPerError, match=BUNDLE_ROOT_ENV):
        build_network(**BUNDLE_NETWORK)
    monkeypatch.setenv(BUNDLE_ROOT_ENV, str(tmp_path))
    with pytest.raises(FedKPerError, match="not a MONAI bundle"):
        build_network(**BUNDLE_NETWORK)
    monkeypatch.setenv(BUNDLE_ROOT_ENV, str(user_bundle))
    with pytest.raises(FedKPerError, match="has 7 classes"):
        build_network(**dict(BUNDLE_NETWORK, num_classes=7))


def test_export_and_predict_a_run_trained_from_a_bundle(user_bundle, retina_federation, monkeypatch, tmp_path, run_layout, capsys):
    monkeypatch.setenv(BUNDLE_ROOT_ENV, str(user_bundle))
    run = run_layout(tmp_path / "ws", retina_federation, BUNDLE_NETWORK)
    out = tmp_path / "trained_bundle"
    assert main(["bundle", "export", "--run", str(run), "--site", "site-1", "--out", str(out)]) == 0
    # The user's own bundle, with the run's weights and where they came from.
    assert (out / "configs" / "inference.json").read_text() == (user_bundle / "configs" / "inference.json").read_text()
    assert json.loads((out / "configs" / "metadata.json").read_text())["fedkper"]["site"] == "site-1"
    original = torch.load(run / "site-1" / "simulate_job" / "personalized_model.pt", weights_only=True)
    exported = torch.load(out / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(original[k], exported[k]) for k in original)
    model = run / "site-1" / "simulate_job" / "personalized_model.pt"
    assert main(["predict", "--model", str(model), "--images", str(retina_federation / "site-1.json"), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    # The exported folder is the user's bundle, and MONAI's init_bundle template reaches `os` (a handler's
    # `$not os.path.exists(...)`): elsewhere it is foreign code, run only with --trust-bundle.
    predict_bundle = ["predict", "--model", str(out), "--images", str(retina_federation / "site-1.json"), "--out", str(tmp_path / "b.csv"), "--no-progress"]
    assert main(predict_bundle) == 2
    assert "inference.json: handlers#0#_disabled_: '$not os.path.exists(@ckpt_path)' uses os" in capsys.readouterr().err
    assert main([*predict_bundle, "--trust-bundle"]) == 0


@pytest.mark.slow
def test_a_job_trained_from_a_bundle_runs_two_rounds(user_bundle, retina_federation, monkeypatch, tmp_path):
    monkeypatch.setenv(BUNDLE_ROOT_ENV, str(user_bundle))  # the simulated sites and server inherit it
    from fedkper_monai.flare.jobspec import load_job, save_job_configs, site_args

    meta, server, client = load_job(JOBS / "fedkper_medmnist")
    # The site executor's settings and every server component that names a network or transforms.
    for args in [site_args(client)] + [component.get("args", {}) for component in server.get("components", [])]:
        if "network" in args:
            args["network"] = dict(args["network"], name="bundle")
        if "transforms" in args:
            args["transforms"] = "bundle"
    job = save_job_configs(tmp_path / "fedkper_bundle", meta, server, client)
    workspace = tmp_path / "ws"
    code = main(["simulate", str(job), "-w", str(workspace), "--data-root", str(retina_federation),
                 "-n", "3", "-t", "3", "--rounds", "2", "--sample-fraction", "0.67", "--local-epochs", "1"])
    assert code == 0
    records = [json.loads(line) for line in next(workspace.glob("server/*/metrics.jsonl")).read_text().splitlines()]
    rounds = [r for r in records if "round" in r and "site" not in r]
    assert [r["round"] for r in rounds] == [0, 1]
    assert any(r.get("task") == "train" and 0 <= r["personalized_acc"] <= 1 for r in records)
    weights = torch.load(next(workspace.glob("server/*/global_model.pt")), weights_only=True)
    assert set(weights) == set(build_network(**BUNDLE_NETWORK).state_dict())
