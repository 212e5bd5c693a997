"""No code from job files (issue 11 item 2): a job names a transform config and sets plain values only."""

from __future__ import annotations

import json

import pytest

from fedkper_monai.data import build_transforms, resolve_transforms_config
from fedkper_monai.data.pipeline import TRANSFORMS_DIR_ENV
from fedkper_monai.errors import DataError


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
    ],
)
def test_settings_that_are_code_are_refused(overrides, field):
    with pytest.raises(DataError) as caught:
        build_transforms("classification_2d", overrides=overrides)
    assert caught.value.field == field


def test_plain_settings_pass():
    build_transforms("classification_2d", image_size=[32, 32], augment=True, overrides={"channels": 3, "intensity_range": [0, 255]})
