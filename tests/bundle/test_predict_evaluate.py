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


# ---------------------------------------------------------------- a plain MONAI datalist: the bundle knows its classes
def _monai_datalist(federation, out, **header):
    """site-1's test list as a MONAI user writes one: entries only (absolute paths), plus ``header``."""
    test = [{"image": e["image"], "label": e["label"], "id": e["id"]} for e in load_datalist(federation / "site-1.json").test]
    out.write_text(json.dumps({**header, "test": test}))
    return out


def test_predict_and_evaluate_take_the_class_count_from_the_bundle(bundle, retina_federation, tmp_path):
    datalist = _monai_datalist(retina_federation, tmp_path / "plain.json")  # no num_classes, no class_names
    names = json.loads((bundle / "configs" / "inference.json").read_text())["class_names"]
    assert main(["predict", "--model", str(bundle), "--images", str(datalist), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == len(load_datalist(retina_federation / "site-1.json").test)
    assert list(rows[0])[4:4 + len(names)] == [f"prob_{n}" for n in names]
    assert main(["evaluate", "--model", str(bundle), "--datalist", str(datalist), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["num_samples"] == len(rows)


def test_predict_reads_a_monai_test_list_without_ids_or_labels(bundle, retina_federation, tmp_path):
    # As MONAI users write one: relative paths, no ids; Decathlon's test lists hold bare paths.
    test = load_datalist(retina_federation / "site-1.json").test
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for entry in test:
        shutil.copy(entry["image"], folder / f"{entry['id']}.png")
    written = [f"imagesTs/{entry['id']}.png" for entry in test]
    items = [{"image": path} if index % 2 else path for index, path in enumerate(written)]
    datalist = tmp_path / "dataset.json"
    datalist.write_text(json.dumps({"test": items}))
    assert main(["predict", "--model", str(bundle), "--images", str(datalist), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    rows = read_csv(tmp_path / "p.csv")
    assert [row["id"] for row in rows] == written and "label" not in rows[0]
    # The same images as the site's list give the same probabilities.
    assert main(["predict", "--model", str(bundle), "--images", str(retina_federation / "site-1.json"), "--out", str(tmp_path / "s.csv"), "--no-progress"]) == 0
    assert [row["prob_0"] for row in rows] == [row["prob_0"] for row in read_csv(tmp_path / "s.csv")]


def test_evaluate_names_the_entry_without_a_label_and_takes_ids_from_paths(bundle, retina_federation, tmp_path, capsys):
    test = [{"image": e["image"], "label": e["label"]} for e in load_datalist(retina_federation / "site-1.json").test]
    datalist = tmp_path / "plain.json"
    datalist.write_text(json.dumps({"test": test}))  # no ids: each image's path names it
    assert main(["evaluate", "--model", str(bundle), "--datalist", str(datalist), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    assert [row["id"] for row in read_csv(tmp_path / "e" / "predictions.csv")] == [e["image"] for e in test]
    del test[1]["label"]
    datalist.write_text(json.dumps({"test": test}))
    assert main(["evaluate", "--model", str(bundle), "--datalist", str(datalist), "--out", str(tmp_path / "f"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"{datalist}: test[1]: missing required key 'label'" in error and not (tmp_path / "f").exists()
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(test[0]["image"], folder / "a.png")
    assert main(["evaluate", "--model", str(bundle), "--datalist", str(folder), "--out", str(tmp_path / "g"), "--no-progress"]) == 2
    assert "a folder of images has no labels" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_a_bundle_without_class_names_counts_its_outputs_from_metadata(bundle, retina_federation, tmp_path):
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    del config["class_names"]
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    del metadata["pred_classes"]
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))  # outputs.pred.num_channels stays: 5
    datalist = _monai_datalist(retina_federation, tmp_path / "plain.json")
    assert main(["evaluate", "--model", str(bundle), "--datalist", str(datalist), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    assert len(json.loads((tmp_path / "e" / "metrics.json").read_text())["per_class_recall"]) == 5


def test_a_datalist_whose_class_count_disagrees_with_the_bundle(bundle, retina_federation, tmp_path, capsys):
    datalist = _monai_datalist(retina_federation, tmp_path / "four.json", num_classes=4)
    assert main(["predict", "--model", str(bundle), "--images", str(datalist), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"{datalist}: num_classes: is 4, but the model has 5 classes" in error and "Traceback" not in error
    assert main(["evaluate", "--model", str(bundle), "--datalist", str(datalist), "--out", str(tmp_path / "e"), "--no-progress"]) == 2
    assert "num_classes: is 4" in capsys.readouterr().err and not (tmp_path / "e").exists()
