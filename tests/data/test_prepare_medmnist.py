"""`prepare medmnist` on the real RetinaMNIST file: the issue's done-when checks, plus bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedkper_monai.cli import main
from fedkper_monai.data import build_transforms, load_datalist, make_dataset, make_loader
from fedkper_monai.data.sources.npz import load_npz_splits
from fedkper_monai.data.medmnist import download_medmnist
from fedkper_monai.errors import DataError


def _prepare(npz: Path, out: Path, *extra: str, sites: int = 20, alpha: float = 0.1, seed: int = 0) -> int:
    return main(["prepare", "medmnist", "--npz", str(npz), "--sites", str(sites), "--alpha", str(alpha),
                 "--seed", str(seed), "--out", str(out), "--no-progress", *extra])


def _digest(folder: Path) -> str:
    """Hash of every datalist (the partition) in an output folder."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.json")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_retinamnist_20_sites(retinamnist_npz, tmp_path, capsys):
    out = tmp_path / "retina"
    assert _prepare(retinamnist_npz, out) == 0
    printed = capsys.readouterr().out
    assert "site-20" in printed and "global_test" in printed
    splits = load_npz_splits(retinamnist_npz)
    train_labels = splits["train"][1].reshape(-1)

    sites = [load_datalist(out / f"site-{k}.json") for k in range(1, 21)]
    assert not (out / "site-21.json").exists()
    assert all(len(s.training) > 0 for s in sites)
    assert all(s.num_classes == 5 and s.spatial_dims == 2 and s.image_size == [28, 28] for s in sites)

    # Every train image used exactly once; no id in two places across all files.
    ids = [e["id"] for s in sites for e in s.training + s.test]
    assert sorted(ids) == [f"train-{i:06d}" for i in range(train_labels.size)]
    global_test = load_datalist(out / "global_test.json")
    global_val = load_datalist(out / "global_val.json")
    assert len(global_test.test) == 400 and global_test.training == []
    assert len(global_val.validation) == 120 and global_val.test == global_val.validation
    assert len(set(ids) | {e["id"] for e in global_test.test} | {e["id"] for e in global_val.validation}) == 1600
    # Labels in the datalists are the file's labels.
    for entry in sites[0].training:
        assert entry["label"] == int(train_labels[int(entry["id"].split("-")[1])])

    # Local test splits: 20% of each site, stratified over the classes it holds.
    for site in sites:
        n = len(site.training) + len(site.test)
        assert len(site.test) == round(0.2 * n)
        train_counts = np.bincount([e["label"] for e in site.training], minlength=5)
        test_counts = np.bincount([e["label"] for e in site.test], minlength=5)
        held = train_counts + test_counts
        assert np.all(train_counts[held > 0] >= 1)  # every class held keeps a training sample
        assert np.all(np.abs(test_counts - 0.2 * held) <= 1.0 + 1e-9)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_sites"] == 20 and summary["sites"]["site-3"]["num_train"] == len(sites[2].training)
    assert (out / "summary.txt").read_text().count("site-") == 20
    assert len(list((out / "images").rglob("*.png"))) == 1600  # shared, not duplicated per site

    # Same seed -> same output; another seed -> another partition.
    again = tmp_path / "again"
    other = tmp_path / "other"
    assert _prepare(retinamnist_npz, again) == 0 and _prepare(retinamnist_npz, other, seed=1) == 0
    assert _digest(again) == _digest(out)
    assert _digest(other) != _digest(out)

    # A site through transforms/classification_2d.json gives MONAI batches with image, label and id.
    transform = build_transforms("classification_2d", image_size=sites[0].image_size)
    loader = make_loader(make_dataset(sites[0].training, transform, cache="memory"), batch_size=8, shuffle=True, seed=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == torch.int64
    assert isinstance(batch["id"], list) and all(i.startswith("train-") for i in batch["id"])
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0 and batch["image"].min() < -0.5
    by_id = {e["id"]: e["label"] for e in sites[0].training}
    assert [by_id[i] for i in batch["id"]] == batch["label"].tolist()


def test_bad_npz_leaves_no_output(retinamnist_npz, tmp_path, capsys):
    truncated = tmp_path / "retinamnist.npz"
    truncated.write_bytes(retinamnist_npz.read_bytes()[:50_000])
    out = tmp_path / "out"
    assert _prepare(truncated, out, sites=4) == 2
    err = capsys.readouterr().err
    assert str(truncated) in err and "truncated or corrupt" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))

    # A text file named .npz is not a .npz, whatever np.load would say about pickles.
    text = tmp_path / "download.npz"
    text.write_text("<html>not found</html>\n")
    assert _prepare(text, out, sites=4) == 2
    assert capsys.readouterr().err.strip() == (
        f"fedkper-monai prepare: error: {text}: --npz: not a .npz archive (a .npz is a zip of .npy arrays, this "
        "file does not start like a zip); is it a text or HTML file?")
    assert not out.exists()

    # An impossible partition (a site would be empty) fails before anything is written.
    assert _prepare(retinamnist_npz, out, sites=200) == 2
    err = capsys.readouterr().err
    assert "--sites" in err and "200 sites" in err and str(retinamnist_npz) in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))

    # A label out of range for the given classes.
    arrays = dict(np.load(retinamnist_npz))
    arrays["test_labels"] = arrays["test_labels"].copy()
    arrays["test_labels"][7] = 9
    bad = tmp_path / "bad_labels.npz"
    np.savez(bad, **arrays)
    with pytest.raises(DataError, match=r"label 9 is out of range \[0, 5\)") as caught:
        from fedkper_monai.data import import_medmnist

        import_medmnist(out, npz=bad, num_sites=4, class_names=["0", "1", "2", "3", "4"], progress=False)
    assert caught.value.field == "test_labels[7]" and not out.exists()

    # A non-empty --out is refused without --overwrite, and left untouched.
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _prepare(retinamnist_npz, out, sites=4) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


def test_download_offline_and_checksum(retinamnist_npz, tmp_path):
    # Offline / unreachable server: a clear error naming the URL and what to do instead.
    with pytest.raises(DataError, match="cannot download.*--npz PATH") as caught:
        download_medmnist("retinamnist", 28, cache_dir=tmp_path / "cache", mirror="http://127.0.0.1:9", progress=False)
    assert caught.value.field == "flag" and not list((tmp_path / "cache").glob("*"))
    with pytest.raises(DataError, match="unknown MedMNIST"):
        download_medmnist("nosuchmnist", cache_dir=tmp_path)

    # A mirror holding the official file: the MD5 matches the table (this copy is the Zenodo file).
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(retinamnist_npz, mirror / "retinamnist.npz")
    path = download_medmnist("retinamnist", cache_dir=tmp_path / "cache", mirror=mirror.as_uri(), progress=False)
    assert path.read_bytes() == retinamnist_npz.read_bytes()

    # A corrupted mirror copy is rejected and not kept.
    (mirror / "retinamnist_64.npz").write_bytes(b"not the file")
    with pytest.raises(DataError, match="checksum mismatch"):
        download_medmnist("retinamnist", 64, cache_dir=tmp_path / "cache", mirror=mirror.as_uri(), progress=False)
    assert not (tmp_path / "cache" / "retinamnist_64.npz").exists()


def test_cli_offline_flag_error(tmp_path, capsys):
    out = tmp_path / "blood"
    code = main(["prepare", "medmnist", "--flag", "bloodmnist", "--sites", "4", "--out", str(out),
                 "--mirror", "http://127.0.0.1:9", "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 2 and "cannot download" in capsys.readouterr().err and not out.exists()


def test_3d_npz_writes_nifti_volumes(tmp_path):
    """A MedMNIST-3D-layout file (N, D, H, W): volumes become NIfTI read back through the 3D config."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 6), ("test", 8)):
        labels = (np.arange(n) % 2).astype(np.uint8).reshape(-1, 1)
        volumes = (rng.random((n, 12, 10, 8)) * 100).astype(np.uint8)
        volumes[labels[:, 0] == 1, 3:9, 3:7, 2:6] = 250  # class 1 holds a bright block
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = volumes, labels
    npz = tmp_path / "toy3d.npz"
    np.savez_compressed(npz, **arrays)
    out = tmp_path / "out3d"
    assert main(["prepare", "medmnist", "--npz", str(npz), "--sites", "2", "--alpha", "1.0", "--min-samples", "5",
                 "--out", str(out), "--no-progress"]) == 0
    site = load_datalist(out / "site-1.json")
    assert site.spatial_dims == 3 and site.image_size == [12, 10, 8]
    assert site.training[0]["image"].endswith(".nii.gz")
    transform = build_transforms("classification_3d", image_size=[16, 16, 16])
    batch = next(iter(make_loader(make_dataset(site.training, transform, cache="none"), batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 1, 16, 16, 16) and batch["label"].dtype == torch.int64
