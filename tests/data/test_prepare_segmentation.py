"""`prepare manifest --task segmentation` (issue 15 item 1) on real volumes: crops of the MNI152 T1 template and
its tissue maps (``../shared/data/mni152``), and the real NIfTI files shipped in the nibabel wheel for the readers.

The partition is stratified by each case's dominant foreground class; bad cases stop with one line naming the
file and the manifest field, and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedkper_monai.cli import main
from fedkper_monai.data import build_transforms, load_datalist
from fedkper_monai.training.tasks import make_task

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CLASSES = ["background", "grey_matter", "white_matter"]
SIDE = 20  # crop side in 2 mm voxels


def _nibabel_file(name: str) -> Path:
    return Path(nib.__file__).parent / "tests" / "data" / name


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture(scope="session")
def mni_cases(tmp_path_factory) -> tuple[Path, list[tuple[Path, Path, int]]]:
    """24 real crops (T1 + tissue label map, 2 mm, 20^3): 12 dominated by grey matter, 12 by white matter."""
    source = SHARED_DATA / "mni152"
    if not source.is_dir():
        pytest.skip(f"{source} not found: the real data sets live in ../shared/data beside the project (present in CI)")
    load = {key: np.asarray(nib.load(str(next(source.glob(f"mni_icbm152_{key}_*.nii.gz")))).dataobj, dtype=np.float32)[::2, ::2, ::2]
            for key in ("t1", "gm", "wm")}
    gm, wm = load["gm"] / 255.0, load["wm"] / 255.0
    labels = np.argmax(np.stack([1.0 - gm - wm, gm, wm]), axis=0).astype(np.uint8)
    folder = tmp_path_factory.mktemp("mni_cases")
    rng = np.random.default_rng(0)
    wanted, cases = {1: 12, 2: 12}, []
    while any(wanted.values()):
        corner = [int(rng.integers(0, s - SIDE)) for s in labels.shape]
        window = tuple(slice(c, c + SIDE) for c in corner)
        counts = np.bincount(labels[window].ravel(), minlength=3)
        if counts[1:].sum() < 0.3 * SIDE**3:
            continue
        dominant = int(np.argmax(counts[1:])) + 1
        if not wanted[dominant]:
            continue
        wanted[dominant] -= 1
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] = [2.0 * c for c in corner]
        k = len(cases)
        image = _save(folder / f"case{k:02d}_t1.nii.gz", load["t1"][window], affine)
        label = _save(folder / f"case{k:02d}_seg.nii.gz", labels[window], affine)
        cases.append((image, label, dominant))
    return folder, cases


def _manifest(path: Path, rows: list[tuple], columns: str = "image,label") -> Path:
    path.write_text(columns + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return path


def _prepare(csv: Path, out: Path, *extra: str) -> int:
    return main(["prepare", "manifest", "--task", "segmentation", "--manifest", str(csv), "--class-names", *CLASSES,
                 "--out", str(out), "--no-progress", *extra])


SKEWED = ["--sites", "2", "--alpha", "0.1", "--min-samples", "3", "--seed", "0"]


def test_label_skew_by_dominant_foreground_class(tmp_path, mni_cases):
    _, cases = mni_cases
    csv = _manifest(tmp_path / "cases.csv", [(image, label) for image, label, _ in cases])
    out = tmp_path / "federation"
    assert _prepare(csv, out, *SKEWED) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "segmentation" and summary["partition"] == "dirichlet"
    assert summary["image_size"] == [16, 16, 16] and summary["max_case_size"] == [SIDE] * 3
    dominant_of = {str(image): d for image, _, d in cases}
    seen = []
    for name in ("site-1", "site-2", "global_test", "global_val"):
        datalist = load_datalist(out / f"{name}.json")
        assert datalist.task == "segmentation" and datalist.class_names == CLASSES and datalist.spatial_dims == 3
        for entry in datalist.training + datalist.test:
            truth = np.asarray(nib.load(entry["label"]).dataobj)
            assert entry["class_voxels"] == np.bincount(truth.ravel(), minlength=3).tolist()
            seen.append(entry["id"])
        if name.startswith("site"):
            by_class = summary["sites"][name]["train_counts"]["cases_by_dominant_class"]
            assert by_class == [sum(dominant_of[e["image"]] == c for e in datalist.training) for c in (1, 2)]
    assert sorted(seen) == sorted(image.as_posix() for image, _, _ in cases)  # each case once
    # Dirichlet(0.1) over the dominant class: the sites' compositions differ strongly.
    shares = [summary["sites"][s]["train_counts"]["cases_by_dominant_class"] for s in ("site-1", "site-2")]
    assert {int(np.argmax(s)) for s in shares} == {0, 1}, shares
    assert all(max(s) >= 0.7 * sum(s) for s in shares), shares
    # Deterministic under the seed.
    again = tmp_path / "again"
    assert _prepare(csv, again, *SKEWED) == 0
    assert (again / "site-1.json").read_text() == (out / "site-1.json").read_text()


def test_a_site_column_gives_natural_sites_whose_cases_load(tmp_path, mni_cases):
    _, cases = mni_cases
    rows = [(image, label, "hospital-a" if k % 3 else "hospital-b") for k, (image, label, _) in enumerate(cases)]
    csv = _manifest(tmp_path / "cases.csv", rows, "image,label,site")
    out = tmp_path / "federation"
    assert _prepare(csv, out, "--min-samples", "3", "--image-size", "16", "16", "16") == 0
    assert {p.name for p in out.glob("hospital-*.json")} == {"hospital-a.json", "hospital-b.json"}
    site = load_datalist(out / "hospital-b.json")
    assert all(Path(e["image"]).name in {Path(r[0]).name for r in rows if r[2] == "hospital-b"} for e in site.training)
    # The written lists feed the site's diversity (from class_voxels) and the MONAI pipeline directly.
    histogram = make_task("segmentation").label_histogram(site.training, 3)
    assert histogram == np.sum([e["class_voxels"][1:] for e in site.training], axis=0).tolist()
    sample = build_transforms("segmentation_3d", image_size=[16] * 3, augment=False, overrides={"eval_size": [SIDE] * 3})(site.training[0])
    assert tuple(sample["image"].shape) == (1, SIDE, SIDE, SIDE) and tuple(sample["label"].shape) == (1, SIDE, SIDE, SIDE)


def test_one_summary_layout_for_both_tasks(tmp_path, mni_cases, retina_federation):
    # One writer: a segmentation summary has the keys of a classification one (values: case compositions).
    _, cases = mni_cases
    csv = _manifest(tmp_path / "cases.csv", [(image, label) for image, label, _ in cases])
    assert _prepare(csv, tmp_path / "seg", "--sites", "4", "--holdout-sites", "1", "--partition", "iid", "--min-samples", "2") == 0
    seg = json.loads((tmp_path / "seg" / "summary.json").read_text())
    classification = json.loads((retina_federation / "summary.json").read_text())
    assert {"sites", "global_val_counts", "global_test_counts", "num_sites", "partition", "seed"} <= set(seg) & set(classification)
    for site in [*seg["sites"].values(), *seg["holdout_sites"].values()]:
        assert set(site) == set(next(iter(classification["sites"].values()))) == {"num_train", "num_test", "train_counts", "test_counts"}
    assert seg["holdout_sites"]["holdout-1"]["num_train"] == 0 and not (tmp_path / "seg" / "site-4.json").exists()
    listed = sum(s["train_counts"]["cases"] + s["test_counts"]["cases"] for s in [*seg["sites"].values(), *seg["holdout_sites"].values()])
    assert listed + seg["global_val_counts"]["cases"] + seg["global_test_counts"]["cases"] == len(cases)
    assert "holdout-1" in (tmp_path / "seg" / "summary.txt").read_text()


def _refused(capsys, csv: Path, out: Path, field: str, file: Path, message: str, *extra: str) -> None:
    assert _prepare(csv, out, "--sites", "2", "--partition", "iid", "--min-samples", "2", *extra) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"{file}: {field}: " in err and message in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "problem, field, message",
    [
        ("shape", "rows[2].label", "label map shape (19, 20, 20) differs from the image's (20, 20, 20)"),
        ("affine", "rows[2].label", "label map geometry (affine) differs from the image's"),
        ("values", "rows[2].label", "label values 0, 1, 2, 5 are not class indices in [0, 3)"),
        ("empty", "rows[2].label", "label map has no foreground voxel"),
        ("4d", "rows[2].image", "has 4 dimensions (20, 20, 20, 2), expected a 3D image"),
        ("nan", "rows[2].image", "holds NaN or infinite voxel values"),
    ],
)
def test_bad_cases_are_refused_naming_file_and_field(tmp_path, capsys, mni_cases, problem, field, message):
    _, cases = mni_cases
    rows = [(image, label) for image, label, _ in cases[:8]]
    image, label = (nib.load(str(p)) for p in rows[2])
    t1, seg = np.asarray(image.dataobj), np.asarray(label.dataobj).copy()
    bad_image, bad_label = tmp_path / "bad_t1.nii.gz", tmp_path / "bad_seg.nii.gz"
    if problem == "shape":
        rows[2] = (rows[2][0], _save(bad_label, seg[1:], label.affine))
    elif problem == "affine":
        shifted = label.affine.copy()
        shifted[0, 3] += 4.0
        rows[2] = (rows[2][0], _save(bad_label, seg, shifted))
    elif problem == "values":
        seg[0, 0, 0] = 5
        rows[2] = (rows[2][0], _save(bad_label, seg, label.affine))
    elif problem == "empty":
        rows[2] = (rows[2][0], _save(bad_label, np.zeros_like(seg), label.affine))
    elif problem == "4d":
        rows[2] = (_save(bad_image, np.stack([t1, t1], axis=-1), image.affine), rows[2][1])
    else:
        t1 = t1.astype(np.float32)
        t1[3, 3, 3] = np.nan
        rows[2] = (_save(bad_image, t1, image.affine), rows[2][1])
    bad = rows[2][1] if field.endswith("label") else rows[2][0]
    _refused(capsys, _manifest(tmp_path / "cases.csv", rows), tmp_path / "out", field, bad, message)


def test_manifest_mistakes_are_refused(tmp_path, capsys, mni_cases):
    _, cases = mni_cases
    rows = [(image, label) for image, label, _ in cases[:8]]
    csv = _manifest(tmp_path / "cases.csv", [*rows[:3], (tmp_path / "missing.nii.gz", rows[3][1]), *rows[4:]])
    _refused(capsys, csv, tmp_path / "out", "rows[3].image", csv, "file not found")
    csv = _manifest(tmp_path / "cases.csv", [(image, label, f"case-{k}") for k, (image, label) in enumerate([*rows, rows[1]])], "image,label,id")
    _refused(capsys, csv, tmp_path / "out", "rows[8].image", csv, "is listed twice (first at rows[1])")
    csv = _manifest(tmp_path / "cases.csv", rows)
    assert main(["prepare", "manifest", "--task", "segmentation", "--manifest", str(csv), "--sites", "2", "--out", str(tmp_path / "out")]) == 2
    assert "--class-names: declare the label maps' classes in index order, background first" in capsys.readouterr().err


def test_real_nifti_files_of_the_nibabel_wheel(tmp_path, capsys):
    """anatomical.nii (a real MR volume) passes with a label map on its grid; the wheel's 4D, moved and NaN
    volumes are refused as what they are."""
    anatomical = _nibabel_file("anatomical.nii")
    volume = nib.load(str(anatomical))
    data = np.asarray(volume.dataobj).astype(np.float32)
    rows = []
    for k in range(6):  # six label maps of the same real volume: brighter and darker tissue by thresholds
        low, high = np.percentile(data, [40 + 5 * k, 80])
        seg = (data > low).astype(np.uint8) + (data > high).astype(np.uint8)
        rows.append((anatomical if k == 0 else _save(tmp_path / f"mr{k}.nii", data, volume.affine), _save(tmp_path / f"seg{k}.nii.gz", seg, volume.affine)))
    csv = _manifest(tmp_path / "cases.csv", rows)
    out = tmp_path / "federation"
    assert main(["prepare", "manifest", "--task", "segmentation", "--manifest", str(csv), "--class-names", "background", "tissue", "bright",
                 "--sites", "2", "--partition", "iid", "--min-samples", "1", "--global-val-fraction", "0", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["max_case_size"] == [33, 41, 25]
    capsys.readouterr()
    wheel = {name: _nibabel_file(name) for name in ("example4d.nii.gz", "reoriented_anat_moved.nii", "resampled_anat_moved.nii")}
    for name, file, field, message in [
        ("example4d.nii.gz", wheel["example4d.nii.gz"], "rows[1].image", "has 4 dimensions (128, 96, 24, 2), expected a 3D image"),
        ("reoriented_anat_moved.nii", rows[1][1], "rows[1].label", "label map shape (33, 41, 25) differs from the image's (21, 26, 22)"),
        ("resampled_anat_moved.nii", wheel["resampled_anat_moved.nii"], "rows[1].image", "holds NaN or infinite voxel values"),
    ]:
        broken = [rows[0], (wheel[name], rows[1][1]), *rows[2:]]
        _refused(capsys, _manifest(tmp_path / "broken.csv", broken), tmp_path / "out", field, file, message)
