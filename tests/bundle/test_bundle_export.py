"""`fedkper-monai bundle export`: a real MONAI bundle that runs with MONAI alone (fast: a laid-out run)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from bundle_helpers import RETINA_NETWORK, assert_same_predictions, monai_bundle, read_csv, run_bundle_inference
from monai.bundle import ConfigParser

from fedkper_monai.bundle.netconfig import check_equivalent, network_config
from fedkper_monai.bundle.preprocessing import inference_preprocessing
from fedkper_monai.cli import main
from fedkper_monai.data import build_transforms, load_datalist
from fedkper_monai.training.networks import build_network


@pytest.fixture(scope="module")
def site_bundle(laid_out_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "site-1"
    assert main(["bundle", "export", "--run", str(laid_out_run), "--site", "site-1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def images(retina_federation, tmp_path_factory):
    """Twelve RetinaMNIST test images of site-1 in a plain folder (what a site collects after training)."""
    folder = tmp_path_factory.mktemp("new_images")
    for entry in load_datalist(retina_federation / "site-1.json").test[:12]:
        shutil.copy(entry["image"], folder)
    return folder


def test_bundle_layout_and_metadata(site_bundle, laid_out_run):
    for relative in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "LICENSE", "docs/README.md"):
        assert (site_bundle / relative).is_file(), relative
    meta = json.loads((site_bundle / "configs" / "metadata.json").read_text())
    assert meta["monai_version"] and meta["pytorch_version"] and meta["version"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 3 and image["spatial_shape"] == [28, 28]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 5
    assert meta["fedkper"]["role"] == "personalized" and meta["fedkper"]["site"] == "site-1"
    assert meta["fedkper"]["run_dir"] == str(laid_out_run.absolute())
    assert len(meta["pred_classes"]) == 5
    weights = torch.load(site_bundle / "models" / "model.pt", weights_only=True)
    original = torch.load(laid_out_run / "site-1" / "simulate_job" / "personalized_model.pt", weights_only=True)
    assert all(torch.equal(weights[k], original[k]) for k in original)


def test_bundle_runs_with_monai_alone_and_matches_predict(site_bundle, images, tmp_path):
    bundle_rows = run_bundle_inference(site_bundle, images, tmp_path / "bundle.csv")
    assert len(bundle_rows) == 12
    assert main(["predict", "--model", str(site_bundle), "--images", str(images), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    names = json.loads((site_bundle / "configs" / "inference.json").read_text())["class_names"]
    assert_same_predictions(bundle_rows, read_csv(tmp_path / "p.csv"), names)


def test_verify_net_in_out_passes(site_bundle):
    out = monai_bundle(
        ["verify_net_in_out", "network_def", "--meta_file", str(site_bundle / "configs/metadata.json"),
         "--config_file", str(site_bundle / "configs/inference.json"), "--device", "cpu"],
        cwd=site_bundle,
    )
    assert "FEDKPER_LOADED=[]" in out


def test_global_export_and_refusals(laid_out_run, tmp_path, capsys):
    out = tmp_path / "global"
    assert main(["bundle", "export", "--run", str(laid_out_run), "--global", "--out", str(out)]) == 0
    assert json.loads((out / "configs/metadata.json").read_text())["fedkper"]["role"] == "global"
    # An existing bundle is kept unless --overwrite.
    assert main(["bundle", "export", "--run", str(laid_out_run), "--global", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["bundle", "export", "--run", str(laid_out_run), "--global", "--out", str(out), "--overwrite"]) == 0
    # A site without a personalized model: an error naming the sites that have one, nothing written.
    assert main(["bundle", "export", "--run", str(laid_out_run), "--site", "site-9", "--out", str(tmp_path / "x")]) == 2
    assert "site-1" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["global"]  # no staging folder left behind


def test_a_run_folder_with_two_server_jobs_is_refused(laid_out_run, tmp_path, capsys):
    # Two jobs' metrics.jsonl below one folder: exporting the first one found would be a guess.
    run = tmp_path / "ws"
    shutil.copytree(laid_out_run, run)
    shutil.copytree(run / "server" / "simulate_job", run / "server" / "another_job")
    assert main(["bundle", "export", "--run", str(run), "--global", "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert f"{run}: 2 metrics.jsonl files found below it (server/another_job/metrics.jsonl, server/simulate_job/metrics.jsonl)" in error
    assert not (tmp_path / "b").exists()
    # The job folder itself names one run.
    assert main(["bundle", "export", "--run", str(run / "server" / "simulate_job"), "--global", "--out", str(tmp_path / "b")]) == 0


@pytest.mark.parametrize("name", ["reference_cnn", "resnet10", "densenet121"])
def test_network_def_is_the_same_network(name):
    spec = dict(RETINA_NETWORK, name=name, image_size=[28, 28] if name == "reference_cnn" else [32, 32])
    config = network_config(spec)
    assert "fedkper_monai" not in json.dumps(config)
    check_equivalent(spec, config, build_network(**spec).state_dict())


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_bundle_preprocessing_equals_the_sites_pipeline(retina_federation, channels):
    config = dict(inference_preprocessing("classification_2d", [28, 28]), channels=channels)
    assert "fedkper_monai" not in json.dumps(config)
    bundle_pipeline = ConfigParser(config).get_parsed_content("preprocessing")
    site_pipeline = build_transforms("classification_2d", image_size=[28, 28], overrides={"channels": channels})
    for entry in load_datalist(retina_federation / "site-1.json").test[:4]:
        ours = bundle_pipeline({"image": entry["image"]})["image"]
        theirs = site_pipeline(dict(entry))["image"]
        assert ours.shape == theirs.shape and torch.allclose(torch.as_tensor(ours), torch.as_tensor(theirs), atol=1e-6)
