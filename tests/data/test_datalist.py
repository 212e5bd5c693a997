"""Datalist JSON: round trip, schema validation, and errors that name the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedkper_monai.data import Datalist, class_counts, load_datalist, write_datalist
from fedkper_monai.errors import DataError


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(4):
        path = folder / f"img{i}.png"
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _doc(images: list[Path], **changes) -> dict:
    doc = {
        "num_classes": 3,
        "class_names": ["a", "b", "c"],
        "training": [{"image": f"imgs/{p.name}", "label": i % 3, "id": f"s{i}"} for i, p in enumerate(images[:3])],
        "test": [{"image": str(images[3]), "label": 1, "id": "s3"}],
    }
    doc.update(changes)
    return doc


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "site-1.json"
    path.write_text(json.dumps(doc))
    return path


def test_round_trip_resolves_and_relativizes_paths(tmp_path, images):
    datalist = load_datalist(_write(tmp_path, _doc(images, image_size=[8, 8])))
    assert datalist.num_classes == 3 and datalist.spatial_dims == 2 and datalist.image_size == [8, 8]
    assert all(Path(e["image"]).is_absolute() and Path(e["image"]).exists() for e in datalist.training + datalist.test)
    assert class_counts(datalist.training, 3) == [1, 1, 1]

    out = tmp_path / "copy" / "site-1.json"
    write_datalist(out, datalist)
    raw = json.loads(out.read_text())
    assert raw["training"][0]["image"] == str(images[0])  # outside the JSON's folder: stays absolute
    out2 = tmp_path / "again.json"
    write_datalist(out2, datalist)
    assert json.loads(out2.read_text())["training"][0]["image"] == "imgs/img0.png"  # below it: relative
    again = load_datalist(out2)
    assert again.training == datalist.training and again.test == datalist.test


def test_test_only_file_is_valid(tmp_path, images):
    doc = _doc(images)
    del doc["training"]
    datalist = load_datalist(_write(tmp_path, doc))
    assert datalist.training == [] and len(datalist.test) == 1


def test_the_model_gives_the_class_count_of_a_plain_monai_datalist(tmp_path, images):
    doc = _doc(images)
    del doc["num_classes"], doc["class_names"]
    path = _write(tmp_path, doc)
    with pytest.raises(DataError, match="num_classes: must be a positive integer, got None"):
        load_datalist(path)  # nothing says how many classes there are
    datalist = load_datalist(path, num_classes=3)
    assert datalist.num_classes == 3 and datalist.class_names == ["0", "1", "2"]
    with pytest.raises(DataError, match=r"training\[1\].label: label 1 is out of range \[0, 1\)"):
        load_datalist(path, num_classes=1)  # the model's count still bounds the labels


def test_a_class_count_that_disagrees_with_the_model(tmp_path, images):
    path = _write(tmp_path, _doc(images))
    assert load_datalist(path, num_classes=3).num_classes == 3
    with pytest.raises(DataError) as caught:
        load_datalist(path, num_classes=5)
    assert caught.value.path == str(path) and caught.value.field == "num_classes"
    assert "is 3, but the model has 5 classes" in str(caught.value)


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"num_classes": "3"}, "num_classes", "positive integer"),
        ({"class_names": ["a", "b"]}, "class_names", "2 names"),
        ({"training": {"image": "x"}}, "training", "must be a list"),
        ({"training": [], "test": []}, None, "no entries"),
        ({"spatial_dims": 4}, "spatial_dims", "2 or 3"),
        ({"image_size": [28]}, "image_size", "2 positive"),
    ],
)
def test_wrong_schema_names_the_field(tmp_path, images, change, field, words):
    path = _write(tmp_path, _doc(images, **change))
    with pytest.raises(DataError) as caught:
        load_datalist(path)
    assert caught.value.field == field and words in str(caught.value) and str(path) in str(caught.value)


def test_a_plain_monai_list_for_predict_is_checked_all_the_same(tmp_path, images):
    doc = _doc(images)
    for entry in doc["training"]:
        del entry["id"]
    with pytest.raises(DataError, match="missing required key 'id'"):
        load_datalist(_write(tmp_path, doc))  # training needs ids: the teacher cache and flips are keyed by them
    read = load_datalist(_write(tmp_path, doc), ids_required=False)
    assert [e["id"] for e in read.training] == [e["image"] for e in doc["training"]]
    del doc["training"][0]["label"]
    with pytest.raises(DataError, match="missing required key 'label'") as caught:
        load_datalist(_write(tmp_path, doc), ids_required=False)
    assert caught.value.field == "training[0]"
    doc["training"][1] = doc["training"][1]["image"]  # a bare path, as in MONAI's Decathlon test lists
    unlabelled = load_datalist(_write(tmp_path, doc), labels_required=False)
    assert "label" not in unlabelled.training[0] and "label" not in unlabelled.training[1]
    assert unlabelled.training[2]["label"] == doc["training"][2]["label"]
    doc["training"][2]["label"] = 3  # a label it has is still checked
    with pytest.raises(DataError, match=r"label 3 is out of range") as caught:
        load_datalist(_write(tmp_path, doc), labels_required=False)
    assert caught.value.field == "training[2].label"
    doc["training"][2] = {"image": doc["training"][0]["image"]}  # one image twice: its path is its id, a duplicate
    with pytest.raises(DataError, match="duplicate id") as caught:
        load_datalist(_write(tmp_path, doc), labels_required=False)
    assert caught.value.field == "training[2].id"


def test_missing_key_label_out_of_range_duplicate_id_missing_file(tmp_path, images):
    doc = _doc(images)
    del doc["training"][1]["id"]
    with pytest.raises(DataError, match="missing required key 'id'") as caught:
        load_datalist(_write(tmp_path, doc))
    assert caught.value.field == "training[1]"

    doc = _doc(images)
    doc["training"][2]["label"] = 3
    with pytest.raises(DataError, match=r"label 3 is out of range \[0, 3\)") as caught:
        load_datalist(_write(tmp_path, doc))
    assert caught.value.field == "training[2].label"

    doc = _doc(images)
    doc["test"][0]["id"] = "s0"
    with pytest.raises(DataError, match="duplicate id 's0'.*training\\[0\\]") as caught:
        load_datalist(_write(tmp_path, doc))
    assert caught.value.field == "test[0].id"

    doc = _doc(images)
    doc["training"][0]["image"] = "imgs/nope.png"
    with pytest.raises(DataError, match="image file not found") as caught:
        load_datalist(_write(tmp_path, doc))
    assert caught.value.field == "training[0].image" and caught.value.path.endswith("site-1.json")
    assert load_datalist(_write(tmp_path, doc), check_files=False).training[0]["image"].endswith("nope.png")


def test_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_datalist(path)
    with pytest.raises(DataError, match="not found"):
        load_datalist(tmp_path / "absent.json")


def test_datalist_is_frozen(tmp_path, images):
    datalist = load_datalist(_write(tmp_path, _doc(images)))
    assert isinstance(datalist, Datalist)
    with pytest.raises(AttributeError):
        datalist.num_classes = 4  # type: ignore[misc]
