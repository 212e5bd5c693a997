"""3D classification (issue 15 item 7): ``transforms/classification_3d.json`` with 3D networks on real volumes,
16^3 patches (2 mm) of the MNI152 T1 template labelled by their dominant tissue (background, grey or white matter,
from the template's tissue maps), imported by ``prepare manifest`` and trained by :class:`Site` rounds with the
reference CNN in 3D and (slow) MONAI's 3D ResNet-10."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fedkper_monai.cli import main
from fedkper_monai.data import build_transforms, load_datalist
from fedkper_monai.errors import DataError
from fedkper_monai.training import build_network
from fedkper_monai.training.site import Site, SiteConfig

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLASSES = ["background", "grey_matter", "white_matter"]
SIDE = 16
PER_CLASS = 24
NETWORK = {"name": "resnet10", "spatial_dims": 3, "in_channels": 1, "num_classes": 3, "image_size": [SIDE] * 3}


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    """72 T1 patches, 24 per dominant tissue, as NIfTI files and a manifest; 2 IID sites."""
    source = SHARED_DATA / "mni152"
    if not source.is_dir():
        pytest.skip(f"{source} not found: the real data sets live in ../shared/data beside the project (present in CI)")
    volume = {key: np.asarray(nib.load(str(next(source.glob(f"mni_icbm152_{key}_*.nii.gz")))).dataobj, dtype=np.float32)[::2, ::2, ::2]
              for key in ("t1", "gm", "wm")}
    tissue = np.argmax(np.stack([1.0 - (volume["gm"] + volume["wm"]) / 255.0, volume["gm"] / 255.0, volume["wm"] / 255.0]), axis=0)
    folder = tmp_path_factory.mktemp("classification_3d")
    rng = np.random.default_rng(0)
    wanted, rows = [PER_CLASS] * 3, []
    while any(wanted):
        corner = [int(rng.integers(0, s - SIDE)) for s in tissue.shape]
        window = tuple(slice(c, c + SIDE) for c in corner)
        counts = np.bincount(tissue[window].ravel(), minlength=3)
        label = int(np.argmax(counts))
        # A clear majority (and some brain in a background patch), so the label says what the patch shows.
        if not wanted[label] or counts[label] < 0.5 * SIDE**3 or counts[1:].sum() < 0.05 * SIDE**3:
            continue
        wanted[label] -= 1
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] = [2.0 * c for c in corner]
        path = folder / f"patch{len(rows):03d}.nii.gz"
        nib.save(nib.Nifti1Image(volume["t1"][window], affine), str(path))
        rows.append(f"{path.name},{CLASSES[label]}")
    (folder / "patches.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    out = folder / "federation"
    assert main(["prepare", "manifest", "--manifest", str(folder / "patches.csv"), "--class-names", *CLASSES,
                 "--sites", "2", "--partition", "iid", "--min-samples", "10", "--out", str(out), "--no-progress"]) == 0
    return out


def test_prepare_writes_3d_datalists_and_the_pipeline_gives_volumes(federation):
    site = load_datalist(federation / "site-1.json")
    assert site.spatial_dims == 3 and site.image_size == [SIDE] * 3 and site.class_names == CLASSES
    sample = build_transforms("classification_3d", image_size=site.image_size)(site.training[0])
    assert tuple(sample["image"].shape) == (1, SIDE, SIDE, SIDE) and sample["image"].dtype == torch.float32
    assert -1.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0


@pytest.mark.parametrize(
    "name, lr",
    [
        ("reference_cnn", 0.003),  # the paper's CNN with 3D convolutions: seconds
        pytest.param("resnet10", 0.001, marks=pytest.mark.slow),  # MONAI's 3D ResNet-10: about a minute on 2 cores
    ],
)
def test_a_site_trains_a_3d_network(federation, tmp_path, name, lr):
    network = {**NETWORK, "name": name}
    # Batch 8: a last batch of one volume would reach ResNet's deepest BatchNorm as 1 value per channel.
    config = SiteConfig(network=network, transforms="classification_3d", local_epochs=5, batch_size=8, optimizer="adam",
                        lr=lr, lr_gamma=1.0, device="cpu", amp=False, seed=0)
    site = Site("site-1", federation / "site-1.json", config, state_dir=tmp_path)
    torch.manual_seed(0)
    weights = build_network(**network).state_dict()
    accuracies = []
    for round_index in range(2):
        report = site.train_round(weights, round_index=round_index, version=round_index)
        assert report is not None and set(report.upload) == set(weights)
        accuracies.append(report.diagnostics["train_acc"])
        weights = report.upload  # a one-site federation: the upload is the next global model
    counts = json.loads((federation / "summary.json").read_text())["sites"]["site-1"]["train_counts"]
    majority = max(counts) / sum(counts)
    print(f"3D {name} on site-1: training accuracy per round {accuracies}, majority share {majority:.3f}, "
          f"personalized accuracy {report.metrics['personalized_acc']:.3f}")
    # Dark background, grey and bright white matter: learnt well above the majority class within two rounds.
    assert accuracies[-1] > majority + 0.15
    assert 0.0 <= report.metrics["personalized_acc"] <= 1.0 and 0.0 < report.score <= 1.0


def test_a_last_batch_of_one_is_dropped_for_batch_norm_networks(federation, tmp_path):
    """MONAI's 3D ResNet-10 at 16^3 pools to 1x1x1 before its last BatchNorm: a batch of one is refused there
    by PyTorch. A site whose training split leaves a last batch of one drops it (and only then)."""
    num_train = len(load_datalist(federation / "site-1.json").training)
    batch_size = next(b for b in range(2, num_train) if num_train % b == 1)
    model = build_network(**NETWORK).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.zeros(1, 1, SIDE, SIDE, SIDE))  # why the drop is needed
    config = SiteConfig(network=NETWORK, transforms="classification_3d", local_epochs=1, batch_size=batch_size,
                        optimizer="adam", lr=0.001, lr_gamma=1.0, device="cpu", amp=False, seed=0)
    site = Site("site-1", federation / "site-1.json", config, state_dir=tmp_path / "batch_norm")
    assert site.train_loader.drop_last and len(site.train_loader) == num_train // batch_size
    report = site.train_round(model.state_dict(), round_index=0, version=0)
    assert report is not None and set(report.upload) == set(model.state_dict())
    # The reference CNN has no batch normalization: it keeps every sample.
    plain = Site("site-1", federation / "site-1.json", dataclasses.replace(config, network={**NETWORK, "name": "reference_cnn"}),
                 state_dir=tmp_path / "plain")
    assert not plain.train_loader.drop_last


def test_one_training_sample_with_batch_norm_is_a_clear_error(federation, tmp_path):
    site_1 = json.loads((federation / "site-1.json").read_text())
    site_1["training"] = site_1["training"][:1]
    # Relative image paths stay valid: the datalist is read from the federation's folder.
    one = federation / "one_sample.json"
    one.write_text(json.dumps(site_1))
    config = SiteConfig(network=NETWORK, transforms="classification_3d", batch_size=4, device="cpu", seed=0)
    with pytest.raises(DataError, match=r"one_sample.json: training: site site-1 has 1 training sample; network 'resnet10' "
                                        "uses batch normalization"):
        Site("site-1", one, config, state_dir=tmp_path)
