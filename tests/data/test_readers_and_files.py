"""Real medical files shipped in the nibabel and pydicom wheels through the transform configs; folder and
manifest importers; bad input (corrupt image, missing file, empty site) with no partial output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fedkper_monai.cli import main
from fedkper_monai.data import (
    build_transforms,
    import_folders,
    import_manifest,
    is_deterministic,
    load_datalist,
    make_dataset,
    make_loader,
    resolve_transforms_config,
)
from fedkper_monai.errors import DataError


def _wheel_file(package: str, *parts: str) -> Path:
    module = pytest.importorskip(package)
    path = Path(module.__file__).parent.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not shipped with this {package} build")
    return path


@pytest.fixture
def dicom_files() -> list[Path]:
    """Real CT and MR slices: pydicom's CT_small/MR_small and nibabel's MR slices 0.dcm/1.dcm."""
    return [
        _wheel_file("pydicom", "data", "test_files", "CT_small.dcm"),
        _wheel_file("pydicom", "data", "test_files", "MR_small.dcm"),
        _wheel_file("nibabel", "tests", "data", "0.dcm"),
        _wheel_file("nibabel", "tests", "data", "1.dcm"),
    ]


def test_dicom_slices_through_the_2d_config(dicom_files):
    transform = build_transforms("classification_2d", image_size=[32, 32])
    entries = [{"image": str(p), "label": i % 2, "id": p.name} for i, p in enumerate(dicom_files)]
    batch = next(iter(make_loader(make_dataset(entries, transform, cache="none"), batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["id"] == [p.name for p in dicom_files] and batch["label"].tolist() == [0, 1, 0, 1]
    # Per-image min/max scaling to [-1, 1] of very different raw ranges (CT in HU, 12-bit MR).
    flat = batch["image"].flatten(1)
    assert torch.all(flat.min(1).values < -0.9) and torch.all(flat.max(1).values > 0.9)
    assert torch.all(flat.std(1) > 0.05)  # real content, not a blank image
    rgb = build_transforms("classification_2d", image_size=[32, 32], overrides={"channels": 3})
    assert rgb(entries[0])["image"].shape == (3, 32, 32)


def test_nifti_volume_through_the_3d_config():
    anatomical = _wheel_file("nibabel", "tests", "data", "anatomical.nii")  # real MR volume, 33x41x25
    transform = build_transforms("classification_3d", image_size=[24, 24, 24])
    sample = transform({"image": str(anatomical), "label": 1, "id": "anat"})
    assert sample["image"].shape == (1, 24, 24, 24) and sample["label"].dtype == torch.int64
    assert -1.0 <= float(sample["image"].min()) < -0.9 and 0.9 < float(sample["image"].max()) <= 1.0
    # A volume in the 2D pipeline is a user error, reported with the file name.
    with pytest.raises(DataError, match="anatomical.nii.*expected 2 spatial axes"):
        make_dataset([{"image": str(anatomical), "label": 0, "id": "a"}], build_transforms("classification_2d"),
                     cache="none")[0]


def test_config_lookup_and_determinism(tmp_path, monkeypatch):
    assert resolve_transforms_config("classification_2d").name == "classification_2d.json"
    custom = tmp_path / "mine.json"
    shutil.copy(resolve_transforms_config("classification_2d"), custom)
    monkeypatch.setenv("FEDKPER_TRANSFORMS_DIR", str(tmp_path))
    assert resolve_transforms_config("mine") == custom
    with pytest.raises(DataError, match="looked at: .*nosuch.json"):
        resolve_transforms_config("nosuch")
    assert is_deterministic(build_transforms("classification_2d"))
    augmented = build_transforms("classification_2d", augment=True)
    assert not is_deterministic(augmented)
    assert is_deterministic(build_transforms("classification_3d"))


def _class_tree(root: Path, dicom_files: list[Path]) -> Path:
    for i, path in enumerate(dicom_files * 6):
        target = root / ("ct" if "CT" in path.name or i % 2 else "mr") / f"{i:02d}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return root


def test_folders_importer_with_dicom_and_corrupt_image(tmp_path, dicom_files, capsys):
    root = _class_tree(tmp_path / "tree", dicom_files)
    out = tmp_path / "out"
    summary = import_folders(root, out, num_sites=2, partition="iid", min_samples=3, image_size=[32, 32], seed=0,
                             progress=False)
    assert summary["class_names"] == ["ct", "mr"] and summary["num_sites"] == 2
    site = load_datalist(out / "site-1.json")
    assert site.image_size == [32, 32] and all(Path(e["image"]).is_relative_to(root) for e in site.training)
    batch = next(iter(make_loader(make_dataset(site.training, build_transforms(image_size=site.image_size)),
                                  batch_size=2, shuffle=True, seed=0)))
    assert batch["image"].shape == (2, 1, 32, 32)

    # A corrupt file: the import stops naming it, and --out stays absent.
    (root / "mr" / "99-broken.dcm").write_bytes(b"DICM" + b"\x00" * 50)
    out2 = tmp_path / "out2"
    code = main(["prepare", "folders", "--root", str(root), "--sites", "2", "--partition", "iid", "--min-samples", "3",
                 "--image-size", "32", "32", "--out", str(out2), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "99-broken.dcm" in err and "cannot read image" in err
    assert not out2.exists() and not list(tmp_path.glob(".out2*"))


def test_manifest_natural_sites_missing_file_and_empty_site(tmp_path, dicom_files):
    cases = tmp_path / "cases"
    cases.mkdir()
    copies = [shutil.copy(path, cases / f"{i:02d}-{path.name}") for i, path in enumerate(dicom_files * 5)]
    rows = ["image,label,site,id"]
    for i, path in enumerate(copies):
        rows.append(f"{path},{'ct' if i % 2 else 'mr'},{'hospital-b' if i < 10 else 'hospital-a'},r{i % 4}")
    manifest = tmp_path / "studies.csv"
    manifest.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="duplicate id") as caught:
        import_manifest(manifest, tmp_path / "dup", class_names=["ct", "mr"], min_samples=1, progress=False)
    assert caught.value.field == "rows[4].id"

    rows = ["image,label,site,id"] + [f"{r.rsplit(',', 1)[0]},r{i}" for i, r in enumerate(rows[1:])]
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    summary = import_manifest(manifest, out, class_names=["ct", "mr"], min_samples=1, image_size=[16, 16], progress=False)
    assert summary["partition"] == "natural" and summary["num_sites"] == 2
    assert [s["source_site"] for s in summary["sites"].values()] == ["hospital-a", "hospital-b"]
    # A hospital's datalist is named after it (the name its FLARE site is given), not site-1.
    assert sorted(summary["sites"]) == ["hospital-a", "hospital-b"] and not (out / "site-1.json").exists()
    assert load_datalist(out / "hospital-a.json").num_classes == 2
    # --site-names maps them to other FLARE site names (e.g. the simulator's site-1 .. site-N).
    mapped = import_manifest(manifest, tmp_path / "mapped", class_names=["ct", "mr"], min_samples=1, image_size=[16, 16],
                             site_names={"hospital-a": "site-2", "hospital-b": "site-1"}, progress=False)
    assert mapped["sites"]["site-1"]["source_site"] == "hospital-b"
    with pytest.raises(DataError, match="no site 'hospital-z'") as caught:
        import_manifest(manifest, tmp_path / "bad", class_names=["ct", "mr"], min_samples=1, image_size=[16, 16],
                        site_names={"hospital-z": "site-1"}, progress=False)
    assert caught.value.field == "site_names" and not (tmp_path / "bad").exists()
    assert (out / "global_test.json").exists() and (out / "global_val.json").exists()

    # A site whose rows are all in the global test: empty after partition.
    with_split = ["image,label,site,id,split"] + [
        f"{r},{'test' if ',hospital-b,' in r else 'train'}" for r in rows[1:]
    ]
    manifest.write_text("\n".join(with_split) + "\n")
    with pytest.raises(DataError, match="'hospital-b' has no training samples") as caught:
        import_manifest(manifest, tmp_path / "empty", class_names=["ct", "mr"], min_samples=1, image_size=[16, 16], progress=False)
    assert caught.value.field == "site" and not (tmp_path / "empty").exists()

    # A missing image file.
    manifest.write_text("image,label,id\nnope.dcm,ct,a\n" + "".join(f"{p},mr,b{i}\n" for i, p in enumerate(dicom_files)))
    with pytest.raises(DataError, match="image file not found") as caught:
        import_manifest(manifest, tmp_path / "missing", class_names=["ct", "mr"], num_sites=1, min_samples=1, progress=False)
    assert caught.value.field == "rows[0].image" and not (tmp_path / "missing").exists()


def test_corrupt_image_in_a_datalist_names_file_and_id(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    dataset = make_dataset([{"image": str(bad), "label": 0, "id": "case-7"}], build_transforms(), cache="none")
    with pytest.raises(DataError, match="bad.png: id=case-7: cannot load or transform image"):
        dataset[0]
    with pytest.raises(DataError, match="id=case-7"):
        make_dataset([{"image": str(bad), "label": 0, "id": "case-7"}], build_transforms(), cache="memory")


# ------------------------------------------------------------------ sizes from headers (issue 21 item 6)
def test_header_sizes_of_real_files(dicom_files, tmp_path):
    from fedkper_monai.data.sources.headers import HeaderSize, header_size

    assert header_size(dicom_files[0]) == HeaderSize((128, 128), 1)  # pydicom's CT_small
    assert header_size(_wheel_file("nibabel", "tests", "data", "anatomical.nii")) == HeaderSize((33, 41, 25), 1)
    series = tmp_path / "series"
    series.mkdir()
    for path in dicom_files[2:]:  # nibabel's two MR slices of one series
        shutil.copy(path, series / path.name)
    (series / "notes.txt").write_text("not a slice")  # skipped, as the series reader skips it
    single = header_size(dicom_files[2])
    assert header_size(series) == HeaderSize((*single.sides, 2), 1)


def test_pillow_refuses_to_decode_above_the_limit_wherever_it_decodes(tmp_path, monkeypatch):
    """At a site MONAI's reader decodes the datalist's images; after limit_pil_decoding, Pillow itself refuses
    an image above the limit (its default refuses only from 179 M pixels and merely warns for the 169 M bomb)."""
    from monai.transforms import LoadImage
    from PIL import Image

    from fedkper_monai.data.sources.headers import limit_pil_decoding

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    path = tmp_path / "wide.png"
    Image.new("L", (200, 200)).save(path)
    assert LoadImage(image_only=True)(str(path)).shape == (200, 200)
    limit_pil_decoding(10_000)
    with pytest.raises(Exception, match="40000 pixels"):
        LoadImage(image_only=True)(str(path))


def test_predict_sizes_an_image_from_its_header(tmp_path):
    from fedkper_monai.bundle.inference import LoadedModel, _CheckedImages

    dot = tmp_path / "dot.png"
    from PIL import Image

    Image.new("L", (2, 2)).save(dot)
    model = LoadedModel(torch.nn.Identity(), lambda entry: {"image": torch.zeros(1, 8, 8)}, ["a"], 1, [8, 8], "m")
    with pytest.raises(DataError, match=r"dot.png: id=d: image .*dot.png is 2x2 by its header, a side under the minimum"):
        _CheckedImages([{"image": str(dot), "id": "d"}], model)[0]
