"""A bundle is code (issue 21 item 7): `predict`/`evaluate` refuse a bundle config that imports modules unless
--trust-bundle; our exported bundles load without it; the site's own $FEDKPER_BUNDLE_ROOT bundle is trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkper_monai.bundle.trust import untrusted_entries
from fedkper_monai.cli import main


@pytest.fixture
def exported(laid_out_run, tmp_path) -> Path:
    out = tmp_path / "bundle"
    assert main(["bundle", "export", "--run", str(laid_out_run), "--site", "site-1", "--out", str(out)]) == 0
    return out


def _edit(bundle: Path, change) -> Path:
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config, indent=2))
    return path


def _predict(bundle: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--model", str(bundle), "--images", str(images), "--out", str(out), "--no-progress", *extra])


def test_our_exported_bundle_loads_without_trust(exported, retina_federation, tmp_path):
    for name in ("inference.json", "metadata.json"):
        assert untrusted_entries(json.loads((exported / "configs" / name).read_text())) == []
    assert _predict(exported, retina_federation / "site-1.json", tmp_path / "p.csv") == 0


def test_a_hostile_network_def_is_refused_and_never_runs(exported, retina_federation, tmp_path, capsys):
    marker = tmp_path / "owned"

    def plant(config):  # a shell command MONAI runs while it builds the network, then the real network
        config["owned"] = f"$__import__('os').system('touch {marker}')"
        config["network_def"] = "$[@owned, " + config["network_def"][1:] + "][1]"

    config_path = _edit(exported, plant)
    images = retina_federation / "site-1.json"
    assert _predict(exported, images, tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert f"{config_path}: owned: " in err and "uses __import__" in err and "pass --trust-bundle" in err, err
    assert len(err.strip().splitlines()) == 1 and not marker.exists() and not (tmp_path / "p.csv").exists()
    assert main(["evaluate", "--model", str(exported), "--datalist", str(images), "--out", str(tmp_path / "e"), "--no-progress"]) == 2
    assert "uses __import__" in capsys.readouterr().err and not marker.exists()
    # The user says they trust it: MONAI runs it as it is (the bundle is MONAI's model, code included).
    assert _predict(exported, images, tmp_path / "p.csv", "--trust-bundle") == 0
    assert marker.exists()


def test_an_import_entry_is_refused_before_monai_imports_it(exported, retina_federation, tmp_path, capsys, monkeypatch):
    """MONAI imports every `$import` entry before it builds anything; a module that acts on import shows it."""
    marker = tmp_path / "imported"
    (tmp_path / "bundle_side_effect.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config_path = _edit(exported, lambda config: config["imports"].append("$import bundle_side_effect"))
    assert _predict(exported, retina_federation / "site-1.json", tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert f"{config_path}: imports#3: '$import bundle_side_effect' imports module bundle_side_effect" in err, err
    assert not marker.exists()
    assert _predict(exported, retina_federation / "site-1.json", tmp_path / "p.csv", "--trust-bundle") == 0
    assert marker.exists()


@pytest.mark.parametrize("config, entry, why", [
    ({"imports": ["$import os"]}, "imports#0", "imports module os"),
    ({"x": "$__import__('os').system('id')"}, "x", "uses __import__"),
    ({"x": "$importlib.import_module('os')"}, "x", "importlib"),
    ({"x": "$monai.utils.optional_import('os')[0]"}, "x", "reaches .optional_import"),
    ({"x": "$torch.os.system('id')"}, "x", "reaches ."),
    ({"imports": ["$import pathlib"], "x": "$pathlib.os.system('id')"}, "x", "reaches ."),
    ({"x": "$torch.serialization.io.open('f')"}, "x", "reaches module io"),
    ({"x": "$getattr(torch, 'o' + 's')"}, "x", "computed attribute name"),
    ({"x": "$().__class__.__base__.__subclasses__()"}, "x", "reaches .__"),
    ({"x": "$torch.load('w.pt', weights_only=False)"}, "x", "unpickling"),
    ({"x": "$np.load('a.npy', allow_pickle=True)"}, "x", "unpickling"),
    ({"net": {"_target_": "os.system", "command": "id"}}, "net#_target_", "instantiates os.system"),
    ({"net": {"_target_": "scripts.net.Net"}}, "net#_target_", "imports module scripts"),
    ({"net": {"_target_": "run", "config_file": "other.json"}}, "net#_target_", "monai.bundle"),
    ({"net": {"_target_": "Identity", "_requires_": ["$__import__('os')"]}}, "net#_requires_#0", "uses __import__"),
    ({"net": "%/elsewhere/config.json#net"}, "net", "another file"),
])
def test_what_counts_as_an_import(config, entry, why):
    found = untrusted_entries(config)
    assert found and found[0][0] == entry and why in found[0][2], found


def test_what_is_not_an_import():
    config = {
        "imports": ["$import csv", "$import collections", "$from monai.transforms import Compose"],
        "dtype": "$torch.float32", "device": "$torch.device('cpu')", "x": "$np.zeros(3)", "net": "$@network_def.to(@device)",
        "w": "$torch.load('w.pt', map_location='cpu', weights_only=True)", "m": "$getattr(x, 'meta', {})",
        "t": {"_target_": "monai.networks.nets.DenseNet121"}, "l": {"_target_": "LoadImaged", "keys": "image"},
        "same_file": "%#t", "plain": "not an expression",
    }
    assert untrusted_entries(config) == []


def test_the_sites_own_bundle_is_trusted(tmp_path, monkeypatch):
    """$FEDKPER_BUNDLE_ROOT is the site operator's bundle, set in their environment: not checked."""
    from fedkper_monai.site_bundle import BUNDLE_ROOT_ENV, build_bundle_network

    configs = tmp_path / "site_bundle" / "configs"
    configs.mkdir(parents=True)
    (configs / "inference.json").write_text(json.dumps({
        "imports": ["$import os"],
        "network_def": {"_target_": "monai.networks.nets.resnet10", "spatial_dims": 2, "n_input_channels": 1, "num_classes": 2},
    }))
    monkeypatch.setenv(BUNDLE_ROOT_ENV, str(configs.parent))
    assert type(build_bundle_network(spatial_dims=2, in_channels=1, num_classes=2, image_size=[32, 32])).__name__ == "ResNet"
