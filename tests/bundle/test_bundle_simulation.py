"""On a real 2-round FedKPer simulation (slow; the golden run of tests/conftest.py, shared with
tests/system/test_simulation.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from bundle_helpers import assert_same_predictions, read_csv, run_bundle_inference

from fedkper_monai.bundle.runs import last_train_line
from fedkper_monai.cli import main
from fedkper_monai.data import load_datalist

pytestmark = pytest.mark.slow

# The sites sampled in the golden run (both rounds: its sampled_sites are site-2 and site-3 twice); site-1 never
# trains there, so it keeps no personalized model (test_simulation checks that only sites that trained keep one).
SITES = ("site-2", "site-3")


@pytest.mark.parametrize("site", SITES)
def test_evaluate_equals_the_personalized_acc_the_run_reported(simulated_run, retina_federation, tmp_path, site):
    out = tmp_path / "eval"
    model = simulated_run / site / "simulate_job" / "personalized_model.pt"
    assert main(["evaluate", "--model", str(model), "--datalist", str(retina_federation / f"{site}.json"), "--split", "test", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    reported = last_train_line(simulated_run, site)
    assert reported["round"] == 1
    assert metrics["accuracy"] == pytest.approx(reported["personalized_acc"], abs=1e-9)
    assert metrics["balanced_accuracy"] == pytest.approx(reported["personalized_balanced_acc"], abs=1e-9)
    assert metrics["num_samples"] == reported["local_test_size"]


@pytest.mark.parametrize("which", [["--global"], ["--site", "site-2"]])
def test_exported_bundle_predicts_like_predict(simulated_run, retina_federation, tmp_path, which):
    bundle = tmp_path / "bundle"
    assert main(["bundle", "export", "--run", str(simulated_run), *which, "--out", str(bundle)]) == 0
    images = tmp_path / "images"
    images.mkdir()
    for entry in load_datalist(retina_federation / "site-2.json").test[:16]:
        shutil.copy(entry["image"], images)
    bundle_rows = run_bundle_inference(bundle, images, tmp_path / "bundle.csv")
    assert main(["predict", "--model", str(bundle), "--images", str(images), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    names = json.loads((bundle / "configs" / "inference.json").read_text())["class_names"]
    assert_same_predictions(bundle_rows, read_csv(tmp_path / "p.csv"), names)
    # The bundle (its own preprocessing) and the run's state dict (the site's pipeline) agree as well.
    weights = "server/simulate_job/global_model.pt" if which == ["--global"] else "site-2/simulate_job/personalized_model.pt"
    assert main(["predict", "--model", str(simulated_run / weights), "--images", str(images), "--out", str(tmp_path / "s.csv"), "--no-progress"]) == 0
    assert_same_predictions(bundle_rows, read_csv(tmp_path / "s.csv"), names)
