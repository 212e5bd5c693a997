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


@pytest.fixture(autouse=True)
def _pillow_guard_restored(monkeypatch):
    """`prepare` sets Pillow's process-wide pixel guard from --max-image-values; other tests keep the default."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


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
            volume = np.full((8, 8, 8), float(label + i), np.float32)
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


# ------------------------------------------------------------------ image size limits (issue 21 item 6)
def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid one-colour RGB PNG of ``width`` x ``height``, written row by row (never held decoded here)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row, parts = zlib.compressobj(9), b"\x00" + b"\x00" * (3 * width), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def test_an_image_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    """The issue's 13000x13000 RGB PNG (~0.5 MB on disk, 507 M values decoded) under a 2 GiB address-space limit:
    decoding it would need more (MONAI makes float32 of it); the header check refuses it first."""
    import subprocess
    import sys

    root = _tree(tmp_path / "t")
    bomb = _bomb_png(root / "b" / "bomb.png", 13000, 13000)
    assert bomb.stat().st_size < 1_000_000
    out = tmp_path / "out"
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
        "from fedkper_monai.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run([sys.executable, "-c", script, "prepare", "folders", "--root", str(root), *FOLDER_RUN,
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert (f"{root}: b/bomb.png: image {bomb} is 13000x13000 with 3 channels by its header (507,000,000 values), "
            "above the limit of 268,435,456 values (--max-image-values): refused before decoding") in done.stderr
    assert "MemoryError" not in done.stderr and not out.exists()


def test_the_size_limit_is_an_option_and_decoding_never_starts(tmp_path, capsys, monkeypatch):
    from PIL import ImageFile

    root = _tree(tmp_path / "t")
    big = root / "a" / "big.png"
    Image.new("L", (300, 200)).save(big)
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    _refused(capsys, ["folders", "--root", str(root), *FOLDER_RUN, "--max-image-values", "50000"], tmp_path / "out",
             f"{root}: a/big.png: image {big} has 60,000 pixels by its header, above the limit of 50,000 values")
    assert (300, 200) not in decoded
    rgb = root / "a" / "big.png"
    Image.new("RGB", (150, 120)).save(rgb)  # 18,000 pixels: Pillow opens it, the channels put it over
    _refused(capsys, ["folders", "--root", str(root), *FOLDER_RUN, "--max-image-values", "50000"], tmp_path / "out",
             f"{root}: a/big.png: image {rgb} is 150x120 with 3 channels by its header (54,000 values), above the limit")
    assert (150, 120) not in decoded
    _refused(capsys, ["folders", "--root", str(root), *FOLDER_RUN, "--max-image-values", "0"], tmp_path / "out",
             f"{root}: --max-image-values: must be a whole number >= 1, got 0")


def test_a_nifti_and_a_dicom_header_above_the_limit_are_refused_unread(tmp_path, capsys):
    import nibabel as nib
    import pydicom

    volumes = tmp_path / "vol"
    for label, name in enumerate(("a", "b")):
        for i in range(12):
            (volumes / name).mkdir(parents=True, exist_ok=True)
            nib.Nifti1Image(np.full((8, 8, 8), float(label + i), np.float32), np.eye(4)).to_filename(str(volumes / name / f"{i:02d}.nii"))
    # A header claiming 2048^3 float32 voxels (32 GiB) over a file of a few bytes of data: never read.
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.float32)
    huge = volumes / "b" / "huge.nii"
    huge.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    _refused(capsys, ["folders", "--root", str(volumes), *FOLDER_RUN], tmp_path / "out",
             f"{volumes}: b/huge.nii: image {huge} is 2048x2048x2048 by its header (8,589,934,592 values), above the limit")
    huge.unlink()

    slice_ = pydicom.dcmread(str(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"))
    slice_.Rows = slice_.Columns = 40000  # 1.6 G values claimed; the pixel data stays 128x128
    tree = _tree(tmp_path / "t")
    claimed = tree / "b" / "claimed.dcm"
    slice_.save_as(str(claimed))
    _refused(capsys, ["folders", "--root", str(tree), *FOLDER_RUN], tmp_path / "out2",
             f"{tree}: b/claimed.dcm: image {claimed} is 40000x40000 by its header (1,600,000,000 values), above the limit")


def test_npz_images_above_the_limit_are_refused_before_decompressing(tmp_path, capsys):
    npz = _npz(tmp_path / "five.npz", np.zeros((60, 8, 8), np.uint8), np.arange(60).reshape(-1, 1) % 5)
    _refused(capsys, ["medmnist", "--npz", str(npz), "--sites", "2", "--max-image-values", "32"], tmp_path / "out",
             f"{npz}: train_images: each image is 8x8 by the array header (64 values), above the limit of 32 values")
    tiny = _npz(tmp_path / "tiny.npz", np.zeros((60, 4, 4), np.uint8), np.arange(60).reshape(-1, 1) % 5)
    _refused(capsys, ["medmnist", "--npz", str(tiny), "--sites", "2"], tmp_path / "out",
             f"{tiny}: train_images: each image is 4x4 by the array header, a side under the minimum of 8 pixels")


def test_a_one_pixel_image_is_refused_not_upscaled(tmp_path, capsys):
    root = _tree(tmp_path / "t")
    dot = root / "a" / "dot.png"
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(dot)
    _refused(capsys, ["folders", "--root", str(root), *FOLDER_RUN, "--image-size", "28", "28"], tmp_path / "out",
             f"{root}: a/dot.png: image {dot} is 1x1 by its header, a side under the minimum of 8 pixels (--min-image-side)")
    # a line of pixels is as empty; the minimum is an option
    Image.fromarray(np.full((1, 64), 200, np.uint8)).save(dot)
    _refused(capsys, ["folders", "--root", str(root), *FOLDER_RUN, "--image-size", "28", "28"], tmp_path / "out",
             f"image {dot} is 64x1 by its header, a side under the minimum of 8 pixels")
    _prepared(["folders", "--root", str(root), *FOLDER_RUN, "--image-size", "28", "28", "--min-image-side", "1"], tmp_path / "ok")


def test_images_that_differ_in_size_name_both_files(tmp_path, capsys):
    root = _tree(tmp_path / "t")
    odd = root / "b" / "05.png"
    Image.fromarray(np.full((16, 12), 9, np.uint8)).save(odd)  # 12 wide, 16 high
    _refused(capsys, ["folders", "--root", str(root), *FOLDER_RUN], tmp_path / "out",
             f"{root}: b/05.png: images differ in size ({odd} is 12x16, {root / 'a' / '00.png'} is 8x8): "
             "pass --image-size to resize them all to one size")
