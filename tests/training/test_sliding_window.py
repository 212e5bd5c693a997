"""Sliding-window whole-volume evaluation for segmentation (issue 15 item 2): the task option
``sliding_window`` runs MONAI's ``sliding_window_inference`` inside ``evaluate``; a site asks for it through
its ``task_args`` and covers whole cases with the transform setting ``eval_size``. Real volumes: crops of the
MNI152 template (``fedkper-monai prepare mni152-demo``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedkper_monai.cli import main
from fedkper_monai.data import build_transforms, load_datalist, make_dataset, make_loader
from fedkper_monai.training import build_network, evaluate
from fedkper_monai.training.site import Site, SiteConfig
from fedkper_monai.training.tasks import make_task

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
UNET = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "num_classes": 3, "image_size": [16, 16, 16], "features": [4, 8]}
WHOLE = [48, 48, 48]  # covers every case of the demo federation below (crops of 40 and 44 voxels)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    if not (SHARED_DATA / "mni152").is_dir():
        pytest.skip(f"{SHARED_DATA / 'mni152'} not found: the real data sets live in ../shared/data (present in CI)")
    out = tmp_path_factory.mktemp("mni") / "federation"
    assert main(["prepare", "mni152-demo", "--source", str(SHARED_DATA / "mni152"), "--sites", "2", "--cases", "2",
                 "--patch-size", "16", "--out", str(out)]) == 0
    return out


class _Recorder:
    """Forward hook: the spatial sizes the network was called with."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.sizes: list[tuple[int, ...]] = []
        network.register_forward_hook(lambda module, inputs, output: self.sizes.append(tuple(inputs[0].shape[2:])))


def _loader(federation: Path, eval_size: list[int]):
    data = load_datalist(federation / "global_test.json")
    transform = build_transforms("segmentation_3d", image_size=UNET["image_size"], overrides={"eval_size": eval_size})
    return make_loader(make_dataset(data.test, transform, cache="none"), batch_size=2, shuffle=False)


def test_sliding_window_stitches_whole_volumes_exactly(federation):
    """A voxel-wise network gives the same logits patch by patch as whole: the stitching is exact, and the
    network only ever sees patches of roi_size."""
    torch.manual_seed(0)
    pointwise = torch.nn.Conv3d(1, 3, kernel_size=1)
    calls = _Recorder(pointwise)
    loader = _loader(federation, WHOLE)
    whole = evaluate(pointwise, loader, device=torch.device("cpu"), num_classes=3, task=make_task("segmentation"))
    assert calls.sizes and set(calls.sizes) == {tuple(WHOLE)}
    calls.sizes.clear()
    task = make_task("segmentation", sliding_window={"roi_size": [16, 16, 16], "sw_batch_size": 3, "overlap": 0.25})
    patched = evaluate(pointwise, loader, device=torch.device("cpu"), num_classes=3, task=task)
    assert set(calls.sizes) == {(16, 16, 16)} and len(calls.sizes) > 1
    assert patched.labels.shape == (6, *WHOLE) and (patched.predictions == whole.predictions).all()
    assert patched.accuracy == pytest.approx(whole.accuracy) and patched.ids == whole.ids


def test_a_unet_evaluates_whole_cases_patch_by_patch(federation):
    torch.manual_seed(0)
    network = build_network(**UNET)
    calls = _Recorder(network)
    task = make_task("segmentation", supervised_loss="dice_ce", sliding_window={"roi_size": [16, 16, 16], "mode": "constant"})
    result = evaluate(network, _loader(federation, WHOLE), device=torch.device("cpu"), num_classes=3, task=task)
    assert set(calls.sizes) == {(16, 16, 16)}
    assert result.predictions.shape == (6, *WHOLE) and 0.0 <= result.accuracy <= 1.0


def test_a_site_asks_for_it_in_its_settings(federation, tmp_path):
    """The job's site settings: task_args.sliding_window and transform_settings.eval_size (whole cases)."""
    config = SiteConfig(network=UNET, task="segmentation", transforms="segmentation_3d", augment=True, optimizer="adam",
                        lr=0.003, local_epochs=1, batch_size=2, amp=False, device="cpu", transform_settings={"eval_size": WHOLE},
                        task_args={"supervised_loss": "dice_ce", "sliding_window": {"roi_size": [16, 16, 16]}})
    site = Site("site-1", federation / "site-1.json", config, state_dir=tmp_path)
    calls = _Recorder(site.global_model)
    torch.manual_seed(1)
    report = site.train_round(build_network(**UNET).state_dict(), round_index=0, version=0)
    assert report is not None and 0.0 <= report.metrics["personalized_dice"] <= 1.0
    assert 0.0 <= report.metrics["global_on_local_dice"] <= 1.0
    # The received model was evaluated on the whole (padded) local test cases, patch by patch.
    assert set(calls.sizes) == {(16, 16, 16)}
    voxels = sum(report.metrics[f"{kind}_global_on_local"] for kind in ("negative_flips", "positive_flips", "unchanged"))
    assert voxels == sum(e["class_voxels"][1] + e["class_voxels"][2] for e in load_datalist(federation / "site-1.json").test)


@pytest.mark.parametrize(
    "option, message",
    [
        ({"roi": [16, 16, 16]}, "unknown key(s) roi"),
        ({}, "roi_size must be 2 or 3 positive integers"),
        ({"roi_size": [16, 0, 16]}, "roi_size must be 2 or 3 positive integers"),
        ({"roi_size": [16, 16, 16], "overlap": 1.0}, "overlap must be in [0, 1)"),
        ({"roi_size": [16, 16, 16], "mode": "median"}, "mode must be 'gaussian' or 'constant'"),
        ({"roi_size": [16, 16, 16], "sw_batch_size": 0}, "sw_batch_size must be a positive integer"),
        ([16, 16, 16], "sliding_window must be a mapping"),
    ],
)
def test_bad_options_are_refused_naming_the_key(option, message):
    with pytest.raises(ValueError) as error:
        make_task("segmentation", sliding_window=option)
    assert message in str(error.value)
