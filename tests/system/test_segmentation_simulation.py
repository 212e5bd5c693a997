"""Dense FedKPer end to end (issue 15): a 2-site, 2-round 3D segmentation run in FLARE's simulator on real
MRI volumes (crops of the one MNI152 template, ``fedkper-monai prepare mni152-demo``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkper_monai import metrics_schema as schema
from fedkper_monai.cli import main

# ../shared/data beside the project (present in CI), as in tests/conftest.py.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.slow
def test_segmentation_simulation_improves_global_dice(tmp_path):
    if not (SHARED_DATA / "mni152").is_dir():
        pytest.skip(f"{SHARED_DATA / 'mni152'} not found: the real data sets live in ../shared/data (present in CI)")
    data = tmp_path / "mni152"
    assert main(["prepare", "mni152-demo", "--source", str(SHARED_DATA / "mni152"), "--sites", "2", "--cases", "6", "--out", str(data)]) == 0
    workspace = tmp_path / "ws"
    code = main(["simulate", "jobs/fedkper_seg3d_demo", "-w", str(workspace), "-n", "2", "--data-root", str(data), "--rounds", "2", "--local-epochs", "1"])
    assert code == 0
    records = [json.loads(line) for line in (workspace / "server" / "simulate_job" / schema.METRICS_FILE).read_text().splitlines()]
    assert records[0]["run"]["task"] == "segmentation"
    rounds = [r for r in records if "round" in r and "site" not in r]
    trains = [r for r in records if r.get("task") == "train"]
    assert len(rounds) == 2 and len(trains) == 4
    # Round lines keep their names and hold mean foreground Dice in a segmentation run.
    assert rounds[1]["global_acc"] > rounds[0]["global_acc"]
    assert len(rounds[1]["global_per_class_forgetting"]) == 2  # grey and white matter
    for line in trains:
        assert "personalized_acc" not in line and 0.0 <= line["personalized_dice"] <= 1.0
        assert 0.0 < line["score"] <= 1.0
        schema.check_site_fields({k: v for k, v in line.items() if k not in ("round", "site", "task", "weight")}, "train")
