"""Running a bundle the way a MONAI user does: `python -m monai.bundle ...` in a fresh process."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

#: The network that fits the RetinaMNIST federation (RGB 28x28, 5 classes).
RETINA_NETWORK = {"name": "reference_cnn", "spatial_dims": 2, "in_channels": 3, "num_classes": 5, "image_size": [28, 28]}

# Runs `python -m monai.bundle ARGS` and reports afterwards whether any fedkper_monai module was loaded.
_WRAPPER = """
import json, runpy, sys
sys.argv = ["monai.bundle", *json.loads(sys.argv[1])]
try:
    runpy.run_module("monai.bundle", run_name="__main__")
except SystemExit as exit_:
    if exit_.code not in (0, None):
        raise
print("FEDKPER_LOADED=" + str(sorted(m for m in sys.modules if m.split(".")[0] == "fedkper_monai")))
"""


def monai_bundle(args: list[str], cwd: Path) -> str:
    """stdout of `python -m monai.bundle ARGS`; asserts it succeeded and never imported fedkper_monai."""
    done = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(args)], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FEDKPER_LOADED=[]" in done.stdout, done.stdout[-2000:]
    return done.stdout


def run_bundle_inference(bundle: Path, images: Path, out_csv: Path) -> list[dict]:
    """Predictions of `python -m monai.bundle run` on a folder, as CSV rows."""
    monai_bundle(
        ["run", "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
         "--dataset_dir", str(images), "--output_file", str(out_csv), "--device", "$torch.device('cpu')"],
        cwd=out_csv.parent,
    )
    with out_csv.open() as handle:
        return list(csv.DictReader(handle))


def read_csv(path: Path) -> list[dict]:
    with Path(path).open() as handle:
        return list(csv.DictReader(handle))


def assert_same_predictions(bundle_rows: list[dict], predict_rows: list[dict], class_names: list[str]) -> None:
    """Same images, same predicted class, probabilities equal to 1e-5."""
    assert [r["image"] for r in bundle_rows] == [r["image"] for r in predict_rows]
    for ours, theirs in zip(bundle_rows, predict_rows):
        assert ours["predicted_index"] == theirs["predicted_index"] and ours["predicted_class"] == theirs["predicted_class"]
        for name in class_names:
            assert abs(float(ours[f"prob_{name}"]) - float(theirs[f"prob_{name}"])) < 1e-5
