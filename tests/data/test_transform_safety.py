"""No code from job files (issue 11 item 2, issue 21 item 1): a job names a transform config and sets only
the plain settings that config declares, to plain values."""

from __future__ import annotations

import json

import pytest

from fedkper_monai.data import build_transforms, resolve_transforms_config
from fedkper_monai.data.pipeline import TRANSFORMS_DIR_ENV, check_plain_settings
from fedkper_monai.errors import DataError
from fedkper_monai.training.site_config import SiteConfig
from fedkper_monai.transform_configs import declared_settings


def _evil_config(folder, marker):
    """A valid-looking 2D config whose first setting is a '$' expression that writes ``marker``."""
    config = json.loads(resolve_transforms_config("classification_2d").read_text())
    config["spatial_dims"] = f"$__import__('pathlib').Path({str(marker)!r}).write_text('pwned') and 2"
    path = folder / "evil.json"
    path.write_text(json.dumps(config))
    return path


def test_a_job_shipped_config_file_is_refused_and_its_code_never_runs(tmp_path):
    job_config = tmp_path / "job" / "app" / "config"
    job_config.mkdir(parents=True)
    marker = tmp_path / "marker"
    evil = _evil_config(job_config, marker)
    for reference in (str(evil), "../job/app/config/evil", "app/config/evil.json"):
        with pytest.raises(DataError, match="refused: a job names a transform config") as caught:
            build_transforms(reference)
        assert caught.value.field == "transforms"
    assert not marker.exists()


def test_the_site_operator_folder_is_trusted(tmp_path, monkeypatch):
    site_configs = tmp_path / "site_transforms"
    site_configs.mkdir()
    (site_configs / "mine.json").write_text(resolve_transforms_config("classification_2d").read_text())
    monkeypatch.setenv(TRANSFORMS_DIR_ENV, str(site_configs))
    assert resolve_transforms_config("mine") == site_configs / "mine.json"
    assert resolve_transforms_config(site_configs / "mine.json") == site_configs / "mine.json"
    build_transforms("mine", image_size=[28, 28])


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"channels": "$__import__('os').system('id')"}, "channels"),
        ({"intensity_range": ["%/etc/passwd#x", 1]}, "intensity_range"),
        ({"channels": {"_target_": "os.system", "command": "id"}}, "channels"),
        ({"transforms": []}, "transforms"),
        ({"_target_": "os.system"}, "_target_"),
        ({"channels": "@transforms"}, "channels"),
        ({"intensity_range": "transforms#0"}, "intensity_range"),
        ({"transforms#1#_target_": "monai.bundle.run"}, "transforms#1#_target_"),
        ({"preprocessing#_target_": "monai.bundle.run"}, "preprocessing#_target_"),
        ({"_comment_": "x"}, "_comment_"),
        ({"eval_size": [96, 96]}, "eval_size"),
    ],
)
def test_settings_that_are_code_are_refused(overrides, field):
    with pytest.raises(DataError) as caught:
        build_transforms("classification_2d", overrides=overrides)
    assert caught.value.field == field


def test_plain_settings_pass():
    build_transforms("classification_2d", image_size=[32, 32], augment=True, overrides={"channels": 3, "intensity_range": [0, 255]})


def _site_json_that_writes(tmp_path):
    """Any JSON file on the site whose ``$`` expression writes a marker when MONAI's ``run`` parses it."""
    marker = tmp_path / "written-by-the-job"
    evil = tmp_path / "some_site_file.json"
    evil.write_text(json.dumps({"run": f"$__import__('pathlib').Path({str(marker)!r}).write_text('pwned')"}))
    return evil, marker


def test_a_monai_config_path_as_a_key_is_refused_and_its_code_never_runs(tmp_path):
    """Issue 21 item 1: today's deny-list let ``transforms#1#_target_`` through; the parser then replaced the
    pipeline's second transform with ``monai.bundle.run``, which ran the file's ``$`` expressions."""
    evil, marker = _site_json_that_writes(tmp_path)
    settings = {"transforms#1#_target_": "monai.bundle.run", "transforms#1#config_file": str(evil)}
    with pytest.raises(DataError) as caught:
        build_transforms("classification_2d", image_size=[28, 28], overrides=settings)
    assert caught.value.field == "transforms#1#_target_"
    assert caught.value.reason == ("refused: a MONAI config path or code, not a setting of the transform config "
                                   "'classification_2d'; valid keys: image_size, channels, intensity_range, augment, spatial_dims")
    # The site's own check, when its executor is built from the job (before any pipeline):
    network = {"name": "reference_cnn", "spatial_dims": 2, "in_channels": 3, "num_classes": 5}
    with pytest.raises(DataError) as caught:
        SiteConfig.from_mapping({"network": network, "transform_settings": settings}, source="site executor args")
    assert caught.value.field == "transform_settings.transforms#1#_target_"
    assert not marker.exists()


def test_the_settings_are_each_configs_own_declared_ones():
    assert declared_settings("classification_2d") == declared_settings("classification_3d") == (
        "image_size", "channels", "intensity_range", "augment", "spatial_dims")
    assert declared_settings("segmentation_2d") == declared_settings("segmentation_3d") == (
        "image_size", "eval_size", "spacing", "intensity_range", "pos_fraction", "num_patches", "augment")
    check_plain_settings({"eval_size": [96, 96], "spacing": [1.0, 1.0]}, "segmentation_2d")
    with pytest.raises(DataError) as caught:
        check_plain_settings({"channels": 3}, "segmentation_2d")
    assert caught.value.field == "channels"


def test_a_site_configs_code_entries_are_not_settings(tmp_path, monkeypatch):
    """What a config declares is read from its entries: a ``$`` expression, an ``@`` reference, a dict to
    instantiate or a ``_key_`` is never something a job may set, whatever its name."""
    config = json.loads(resolve_transforms_config("classification_2d").read_text())
    config.update({"threshold": 0.5, "device": "$torch.device('cpu')", "size_alias": "@image_size",
                   "reader": {"_target_": "PILReader"}, "_requires_": "$import os", "pipeline#x": 1})
    folder = tmp_path / "site_transforms"
    folder.mkdir()
    (folder / "mine.json").write_text(json.dumps(config))
    monkeypatch.setenv(TRANSFORMS_DIR_ENV, str(folder))
    assert declared_settings("mine") == ("image_size", "channels", "intensity_range", "augment", "spatial_dims", "threshold")
    for key in ("device", "size_alias", "reader", "_requires_", "pipeline#x"):
        with pytest.raises(DataError) as caught:
            check_plain_settings({key: 1}, "mine")
        assert caught.value.field == key
    check_plain_settings({"threshold": 0.7}, "mine")
