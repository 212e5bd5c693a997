"""`prepare` refuses the silent cases of issue 11 item 6 with one line naming the file and the field.

Each case runs the command line (exit code 2, no traceback, no output folder) and checks the exact message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedkper_monai.cli import main
from fedkper_monai.data import load_datalist


def _png(path: Path, value: int, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8) if mode == "L" else (8, 8, 3)
    Image.fromarray(np.full(shape, value, np.uint8), mode=mode).save(path)
    return path


def _tree(root: Path, classes=("a", "b"), per_class: int = 12, rgb_every: int = 0) -> Path:
    for label, name in enumerate(classes):
        for i in range(per_class):
            mode = "RGB" if rgb_every and i % rgb_every == 0 else "L"
            _png(root / name / f"{i:02d}.png", 20 * label + i, mode)
    return root


def _refused(capsys, args: list[str], out: Path, message: str) -> None:
    assert main(["prepare", *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _prepared(args: list[str], out: Path) -> None:
    assert main(["prepare", *args, "--out", str(out), "--no-progress"]) == 0


def _manifest(path: Path, rows: list[tuple[Path, str]]) -> Path:
    path.write_text("image,label\n" + "".join(f"{image},{label}\n" for image, label in rows))
    return path


FOLDER_RUN = ["--sites", "2", "--partition", "iid", "--min-samples", "3"]


def test_a_label_name_without_a_mapping_is_refused(tmp_path, capsys):
    images = sorted(_tree(tmp_path / "t").rglob("*.png"))
    rows = [(p, "0" if p.parent.name == "a" else "1") for p in images]
    rows[3] = (rows[3][0], "abc")
    csv = _manifest(tmp_path / "m.csv", rows)
    _refused(capsys, ["manifest", "--manifest", str(csv), *FOLDER_RUN], tmp_path / "out",
             f"{csv}: rows[3].label: label 'abc' is not a class index; to use label names, map them to indices with --class-names")
    # with a mapping, names are fine; an unmapped name is still refused
    named = _manifest(tmp_path / "named.csv", [(p, p.parent.name) for p in images])
    _prepared(["manifest", "--manifest", str(named), "--class-names", "a", "b", *FOLDER_RUN], tmp_path / "ok")
    _refused(capsys, ["manifest", "--manifest", str(csv), "--class-names", "a", "b", *FOLDER_RUN], tmp_path / "out2",
             f"{csv}: rows[3].label: unknown label 'abc'; classes: ['a', 'b']")


def test_a_gap_in_numeric_labels_is_refused(tmp_path, capsys):
    images = sorted(_tree(tmp_path / "t").rglob("*.png"))
    csv = _manifest(tmp_path / "m.csv", [(p, "0" if p.parent.name == "a" else "1") for p in images[:-1]] + [(images[-1], "7")])
    _refused(capsys, ["manifest", "--manifest", str(csv), *FOLDER_RUN], tmp_path / "out",
             f"{csv}: rows[23].label: label 7 implies 8 classes but classes [2, 3, 4, 5, 6] have no image")


def test_the_same_image_twice_is_refused(tmp_path, capsys):
    images = sorted(_tree(tmp_path / "t").rglob("*.png"))
    rows = [(p, "0" if p.parent.name == "a" else "1") for p in images]
    rows.append((images[0], "1"))
    csv = tmp_path / "m.csv"
    csv.write_text("image,label,id\n" + "".join(f"{image},{label},case-{i}\n" for i, (image, label) in enumerate(rows)))
    _refused(capsys, ["manifest", "--manifest", str(csv), *FOLDER_RUN], tmp_path / "out",
             f"{csv}: rows[24].image: image '{images[0]}' is listed twice (first at rows[0], label 0; here label 1)")


def test_mixed_gray_and_rgb_need_channels(tmp_path, capsys):
    root = _tree(tmp_path / "t", rgb_every=5)
    _refused(capsys, ["folders", "--root", str(root), *FOLDER_RUN], tmp_path / "out",
             f"{root}: a/01.png: images mix channel counts ({root / 'a' / '01.png'} has 1, {root / 'a' / '00.png'} has 3): "
             "pass --channels 1 or 3")
    _prepared(["folders", "--root", str(root), "--channels", "3", *FOLDER_RUN], tmp_path / "ok")
    assert load_datalist(tmp_path / "ok" / "site-1.json").channels == 3


def test_an_empty_class_folder_is_refused(tmp_path, capsys):
    root = _tree(tmp_path / "t")
    (root / "c").mkdir()
    _refused(capsys, ["folders", "--root", str(root), *FOLDER_RUN], tmp_path / "out",
             f"{root / 'c'}: --root: class folder holds no image")


def test_nan_voxels_are_refused(tmp_path, capsys):
    import nibabel as nib

    root = tmp_path / "vol"
    for label, name in enumerate(("a", "b")):
        for i in range(12):
            (root / name).mkdir(parents=True, exist_ok=True)
            volume = np.full((6, 6, 6), float(label + i), np.float32)
            if name == "b" and i == 4:
                volume[2, 2, 2] = np.nan
            nib.Nifti1Image(volume, np.eye(4)).to_filename(str(root / name / f"{i:02d}.nii.gz"))
    _refused(capsys, ["folders", "--root", str(root), *FOLDER_RUN], tmp_path / "out",
             f"{root}: b/04.nii.gz: image {root / 'b' / '04.nii.gz'} holds NaN or infinite values")


def _npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    val, test = images[:10], images[:10]
    np.savez(path, train_images=images, train_labels=labels, val_images=val, val_labels=labels[:10],
             test_images=test, test_labels=labels[:10])
    return path


def test_npz_label_beyond_the_classes_is_refused(tmp_path, capsys):
    labels = np.arange(60).reshape(-1, 1) % 5
    labels[41] = 7
    npz = _npz(tmp_path / "five.npz", np.zeros((60, 8, 8), np.uint8), labels)
    _refused(capsys, ["medmnist", "--npz", str(npz), "--sites", "2"], tmp_path / "out",
             f"{npz}: train_labels[41]: label 7 implies 8 classes but classes [5, 6] have no sample")


@pytest.mark.parametrize("value", [0.5, np.nan])
def test_float_npz_images_are_refused_without_a_traceback(tmp_path, capsys, value):
    npz = _npz(tmp_path / "float.npz", np.full((60, 8, 8), value, np.float32), np.arange(60).reshape(-1, 1) % 5)
    _refused(capsys, ["medmnist", "--npz", str(npz), "--sites", "2"], tmp_path / "out",
             f"{npz}: train_images: images must be uint8 (0..255, MedMNIST's layout), got float32")


def test_stale_partial_folders_of_a_killed_prepare_are_removed(tmp_path):
    root = _tree(tmp_path / "t")
    stale = tmp_path / ".out.k1ll3d.partial"
    (stale / "images").mkdir(parents=True)
    other = tmp_path / ".other.abc.partial"
    other.mkdir()
    _prepared(["folders", "--root", str(root), *FOLDER_RUN], tmp_path / "out")
    assert not stale.exists() and other.exists(), "only the staging folders of this output are removed"
