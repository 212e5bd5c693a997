"""Folder and manifest importers on small PNG sets: which samples land in global_test / global_val, and how
errors name the setting (the Python parameter for Python callers, the flag for the CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedkper_monai.cli import main
from fedkper_monai.data import ImportSettings, import_folders, import_manifest, load_datalist
from fedkper_monai.errors import DataError

CLASSES = ("a", "b", "c", "d")
PER_CLASS = 25  # 100 images: a 30% global test (30) and a 10% global val (10) cannot be mistaken for each other


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


@pytest.fixture
def flat_tree(tmp_path) -> Path:
    root = tmp_path / "flat"
    for label, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            _png(root / name / f"{i:02d}.png", 10 * label + i)
    return root


def _global_ids(out: Path) -> tuple[set[str], set[str], set[str]]:
    """(global test ids, global val ids, ids in the site datalists)."""
    test = load_datalist(out / "global_test.json")
    val = load_datalist(out / "global_val.json")
    sites = [load_datalist(p) for p in sorted(out.glob("site-*.json"))]
    site_ids = {e["id"] for s in sites for e in s.training + s.test}
    assert test.validation == [] and val.test == val.validation
    return {e["id"] for e in test.test}, {e["id"] for e in val.validation}, site_ids


def _prepare(kind: str, *args: str) -> int:
    return main(["prepare", kind, *args, "--no-progress"])


def _assert_carved(out: Path, total: int) -> None:
    test, val, sites = _global_ids(out)
    # The shares asked for: 30% test, 10% val, stratified (the same share of every class).
    assert len(test) == round(0.3 * total) and len(val) == round(0.1 * total)
    assert not (test & val) and not (test & sites) and not (val & sites) and len(test | val | sites) == total


def test_folders_carve_test_and_val_with_their_own_shares(flat_tree, tmp_path):
    out = tmp_path / "out"
    assert _prepare("folders", "--root", str(flat_tree), "--sites", "2", "--partition", "iid", "--min-samples", "5",
                    "--global-test-fraction", "0.3", "--global-val-fraction", "0.1", "--out", str(out)) == 0
    _assert_carved(out, len(CLASSES) * PER_CLASS)


def test_manifest_carves_like_folders_and_keeps_a_split_column(flat_tree, tmp_path):
    images = sorted(flat_tree.rglob("*.png"))
    manifest = tmp_path / "plain.csv"
    manifest.write_text("image,label\n" + "".join(f"{p},{p.parent.name}\n" for p in images))
    out = tmp_path / "carved"
    assert _prepare("manifest", "--manifest", str(manifest), "--sites", "2", "--partition", "iid", "--min-samples", "5",
                    "--global-test-fraction", "0.3", "--global-val-fraction", "0.1", "--class-names", *CLASSES,
                    "--out", str(out)) == 0
    _assert_carved(out, len(images))

    # A split column: its test rows are the global test, its val rows the global val.
    split_of = {p: ("test" if i % 5 == 0 else "val" if i % 5 == 1 else "train") for i, p in enumerate(images)}
    manifest.write_text("image,label,id,split\n" + "".join(
        f"{p},{p.parent.name},{split_of[p]}-{i},{split_of[p]}\n" for i, p in enumerate(images)))
    out = tmp_path / "given"
    assert _prepare("manifest", "--manifest", str(manifest), "--sites", "2", "--partition", "iid", "--min-samples", "5",
                    "--class-names", *CLASSES, "--out", str(out)) == 0
    test, val, sites = _global_ids(out)
    assert test and all(i.startswith("test-") for i in test)
    assert val and all(i.startswith("val-") for i in val)
    assert all(i.startswith("train-") for i in sites)


def test_folders_train_val_test_tree_keeps_its_splits(tmp_path):
    root = tmp_path / "split"
    for split, count in (("train", 12), ("val", 2), ("test", 4)):
        for label, name in enumerate(CLASSES):
            for i in range(count):
                _png(root / split / name / f"{i:02d}.png", 10 * label + i)
    out = tmp_path / "out"
    import_folders(root, out, num_sites=2, partition="iid", min_samples=5, progress=False)
    test, val, sites = _global_ids(out)
    assert len(test) == 16 and all(i.startswith("test/") for i in test)
    assert len(val) == 8 and all(i.startswith("val/") for i in val)
    assert len(sites) == 48 and all(i.startswith("train/") for i in sites)


def test_errors_name_the_parameter_in_python_and_the_flag_on_the_command_line(flat_tree, tmp_path, capsys):
    with pytest.raises(DataError, match=r"must be in \[0, 1\), got 1.5") as caught:
        import_folders(flat_tree, tmp_path / "a", num_sites=2, local_test_fraction=1.5, progress=False)
    assert caught.value.field == "local_test_fraction" and not (tmp_path / "a").exists()
    assert _prepare("folders", "--root", str(flat_tree), "--sites", "2", "--local-test-fraction", "1.5",
                    "--out", str(tmp_path / "a")) == 2
    assert ": --local-test-fraction: must be in [0, 1), got 1.5" in capsys.readouterr().err

    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\n" + "".join(f"{p},{p.parent.name}\n" for p in sorted(flat_tree.rglob("*.png"))))
    with pytest.raises(DataError, match="give --sites N") as caught:
        import_manifest(manifest, tmp_path / "b", class_names=CLASSES, settings=ImportSettings(progress=False))
    assert caught.value.field == "num_sites"
    assert _prepare("manifest", "--manifest", str(manifest), "--class-names", *CLASSES, "--out", str(tmp_path / "b")) == 2
    assert ": --sites: give --sites N" in capsys.readouterr().err

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty") as caught:
        import_folders(flat_tree, busy, num_sites=2, partition="iid", min_samples=5, progress=False)
    assert caught.value.field == "out"
    assert _prepare("folders", "--root", str(flat_tree), "--sites", "2", "--partition", "iid", "--min-samples", "5",
                    "--out", str(busy)) == 2
    assert ": --out: output folder exists" in capsys.readouterr().err and (busy / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError) as caught:
        import_folders(tmp_path / "nowhere", tmp_path / "c", num_sites=2)
    assert caught.value.field == "root"
    assert _prepare("folders", "--root", str(tmp_path / "nowhere"), "--sites", "2", "--out", str(tmp_path / "c")) == 2
    assert ": --root: folder not found" in capsys.readouterr().err


def test_settings_object_and_keyword_options_agree(flat_tree, tmp_path):
    settings = ImportSettings(num_sites=2, partition="iid", min_samples=5, seed=3, progress=False)
    by_object = import_folders(flat_tree, tmp_path / "a", settings=settings)
    by_keywords = import_folders(flat_tree, tmp_path / "b", num_sites=2, partition="iid", min_samples=5, seed=3,
                                 progress=False)
    assert by_object == by_keywords
    assert [p.read_bytes() for p in sorted((tmp_path / "a").glob("*.json"))] == [
        p.read_bytes() for p in sorted((tmp_path / "b").glob("*.json"))
    ]
    # A keyword overrides the settings object.
    assert import_folders(flat_tree, tmp_path / "c", settings=settings, seed=4)["seed"] == 4
    with pytest.raises(TypeError):
        import_folders(flat_tree, tmp_path / "d", settings=settings, num_site=2)
