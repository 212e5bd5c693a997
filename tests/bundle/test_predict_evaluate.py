"""`fedkper-monai predict` and `evaluate` on a state dict or a bundle, and their errors (fast: a laid-out run)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from bundle_helpers import RETINA_NETWORK, read_csv
from PIL import Image

from fedkper_monai.bundle.evaluation import classification_metrics
from fedkper_monai.cli import main
from fedkper_monai.data import load_datalist


def _personalized(run):
    return run / "site-1" / "simulate_job" / "personalized_model.pt"


def test_predict_a_datalist_with_a_personalized_state_dict(laid_out_run, retina_federation, tmp_path):
    out = tmp_path / "p.csv"
    # The run is found from the model's place in it; --run says it explicitly.
    for extra in ([], ["--run", str(laid_out_run)]):
        code = main(["predict", "--model", str(_personalized(laid_out_run)), *extra, "--images", str(retina_federation / "site-1.json"), "--out", str(out), "--no-progress"])
        assert code == 0
    rows = read_csv(out)
    datalist = load_datalist(retina_federation / "site-1.json")
    assert [r["id"] for r in rows] == [e["id"] for e in datalist.test]
    names = datalist.class_names
    assert list(rows[0]) == ["id", "image", "predicted_index", "predicted_class", *[f"prob_{n}" for n in names], "label", "label_class"]
    for row in rows:
        probabilities = [float(row[f"prob_{n}"]) for n in names]
        assert abs(sum(probabilities) - 1) < 1e-5 and int(row["predicted_index"]) == int(np.argmax(probabilities))
        assert row["predicted_class"] == names[int(row["predicted_index"])]


def test_predict_with_a_network_spec(laid_out_run, retina_federation, tmp_path):
    weights = tmp_path / "w.pt"
    shutil.copy(_personalized(laid_out_run), weights)  # outside its run: the spec says what it is
    assert main(["predict", "--model", str(weights), "--images", str(retina_federation / "site-1.json"), "--out", str(tmp_path / "a.csv"), "--no-progress"]) == 2
    assert main(["predict", "--model", str(weights), "--network", json.dumps(RETINA_NETWORK), "--images", str(retina_federation / "site-1.json"), "--out", str(tmp_path / "a.csv"), "--no-progress"]) == 0
    assert main(["predict", "--model", str(_personalized(laid_out_run)), "--images", str(retina_federation / "site-1.json"), "--out", str(tmp_path / "b.csv"), "--no-progress"]) == 0
    assert [r["prob_0"] for r in read_csv(tmp_path / "a.csv")] == [r["prob_0"] for r in read_csv(tmp_path / "b.csv")]


def test_evaluate_writes_metrics_figure_and_predictions(laid_out_run, retina_federation, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(_personalized(laid_out_run)), "--datalist", str(retina_federation / "site-1.json"), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "balanced_accuracy", "per_class_recall", "confusion_matrix", "num_samples"} <= set(metrics)
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(out / "predictions.csv")
    assert metrics["num_samples"] == len(rows) == sum(map(sum, metrics["confusion_matrix"]))
    correct = sum(r["predicted_index"] == r["label"] for r in rows)
    assert metrics["accuracy"] == pytest.approx(correct / len(rows))
    assert "balanced accuracy" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(_personalized(laid_out_run)), "--datalist", str(retina_federation / "site-1.json"), "--out", str(out), "--no-progress"]) == 2


def test_classification_metrics_by_hand():
    metrics = classification_metrics(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["per_class_recall"] == {"a": 0.5, "b": pytest.approx(2 / 3), "c": None}
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)  # over the classes present
    assert metrics["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]


# ---------------------------------------------------------------- bad input: errors, not tracebacks
@pytest.fixture
def bundle(laid_out_run, tmp_path):
    out = tmp_path / "bundle"
    assert main(["bundle", "export", "--run", str(laid_out_run), "--site", "site-1", "--out", str(out)]) == 0
    return out


def test_missing_model_file(bundle, retina_federation, tmp_path, capsys):
    (bundle / "models" / "model.pt").unlink()
    assert main(["predict", "--model", str(bundle), "--images", str(retina_federation / "site-1.json"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "models/model.pt: model file not found" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_weights_that_do_not_fit_the_network(bundle, retina_federation, tmp_path, capsys):
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    weights["classifier.weight"] = torch.zeros(7, 512)
    torch.save(weights, bundle / "models" / "model.pt")
    assert main(["predict", "--model", str(bundle), "--images", str(retina_federation / "site-1.json"), "--out", str(tmp_path / "p.csv")]) == 2
    error = capsys.readouterr().err
    assert "'classifier.weight'" in error and "(5, 512)" in error and "(7, 512)" in error


def test_gray_image_for_an_rgb_model_names_the_file(bundle, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((40, 40), 128, dtype=np.uint8)).save(folder / "gray.png")  # 40x40: resized, allowed
    assert main(["predict", "--model", str(bundle), "--images", str(folder), "--out", str(tmp_path / "p.csv")]) == 2
    error = capsys.readouterr().err
    assert "gray.png" in error and "1 channel(s)" in error and "takes 3" in error and "Traceback" not in error


def test_corrupt_image_names_the_file(bundle, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    assert main(["predict", "--model", str(bundle), "--images", str(folder), "--out", str(tmp_path / "p.csv")]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_a_folder_that_is_not_a_bundle(tmp_path, retina_federation, capsys):
    assert main(["predict", "--model", str(tmp_path), "--images", str(retina_federation / "site-1.json"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "not a MONAI bundle" in capsys.readouterr().err
