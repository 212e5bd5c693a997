"""Source: a CSV manifest of segmentation cases, columns ``image,label`` and optionally ``site``, ``split``, ``id``.

Each row is one case: ``image`` a volume (NIfTI, a DICOM series folder, any SimpleITK format, or a 2D image)
and ``label`` its label map of class indices on the same grid, paths relative to the CSV's folder or absolute.
Every case is read and checked once before anything is written
(:func:`~fedkper_monai.data.volumes.check_case`): image and label of different shapes or affines, label values
outside the declared classes, an empty label map and a 4D volume where 3D is expected stop ``prepare`` with an
error naming the file and the manifest field (``rows[3].label``), and ``out`` stays empty.

Partition (without a ``site`` column): each case is stratified by its **dominant foreground class**, the
foreground class with the most voxels in its label map (ties: the lower index). The Dirichlet(alpha) label skew,
the stratified global test/val carve and each site's stratified local test split run over that class, exactly as
over image labels in classification; so at small alpha a site holds mostly cases dominated by one structure
(e.g. grey-matter-rich crops at one site, white-matter-rich ones at another). A ``site`` column gives the natural
partition instead (real hospitals), as for classification manifests.

Output: the same files as every ``prepare``, written by the same writer
(:func:`~fedkper_monai.data.federation.write_federation`: ``site-k.json`` or the site column's names,
``holdout-k.json``, ``global_test.json``, ``global_val.json``, ``summary.json``/``.txt``); the datalists declare
``"task": "segmentation"`` and each entry carries ``class_voxels`` (voxels per class, background first), from
which a site computes its label diversity without reading its label maps again. The summary's ``*_counts`` are
the lists' compositions (:mod:`fedkper_monai.data.summary`) and ``max_case_size`` the largest case.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fedkper_monai.data.federation import Catalog, Row, import_catalog
from fedkper_monai.data.import_settings import ImportSettings
from fedkper_monai.data.sources.headers import check_image_header
from fedkper_monai.data.sources.manifest import _read_csv, _site_and_split
from fedkper_monai.data.volumes import check_case, read_volume
from fedkper_monai.errors import DataError

__all__ = ["import_segmentation_manifest"]

_FLAT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Largest default training patch side: MONAI's usual 96^3 for CT/MR segmentation.
_MAX_DEFAULT_PATCH = 96


@dataclass(frozen=True)
class _Case:
    """One checked manifest row: its files, voxels per class and image shape."""

    row: Row
    label: str
    class_voxels: list[int]
    shape: tuple[int, ...]


def _path(value: str, csv_path: Path, where: str) -> str:
    """A manifest path resolved against the CSV's folder; it must exist (a DICOM series may be a folder)."""
    if not value:
        raise DataError(csv_path, "empty path", field=where)
    path = Path(value).expanduser()
    path = path if path.is_absolute() else csv_path.parent / path
    if not path.exists():
        raise DataError(csv_path, f"file not found: {path}", field=where)
    return str(path)


def _shape(image: str, dims: int) -> tuple[int, ...]:
    """The image's spatial shape; from the NIfTI header alone where possible (check_case read the data already)."""
    if image.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return tuple(int(s) for s in nib.load(image).shape[:dims])
    return tuple(int(s) for s in read_volume(image)[0].shape[:dims])


def _spatial_dims(first_image: str, settings: ImportSettings) -> int:
    """``--spatial-dims`` when given; else 2 for a flat image format (PNG, JPEG, ...), 3 for volumes."""
    if settings.spatial_dims is not None:
        return int(settings.spatial_dims)
    return 2 if first_image.lower().endswith(_FLAT_SUFFIXES) else 3


def _check_row(rec: dict[str, str], i: int, columns: list[str], num_classes: int, dims: int, csv_path: Path,
               settings: ImportSettings) -> _Case:
    """Read and check one case; a bad file is named together with its manifest field (``rows[i].label``)."""
    where = f"rows[{i}]"
    image = _path(rec["image"], csv_path, f"{where}.image")
    label = _path(rec["label"], csv_path, f"{where}.label")
    # Sized from the header before read_volume decodes. No minimum side: cases are cropped or padded to the
    # patch, never resized up (a 3-slice volume is a thin case, not an invented one).
    for path, column in ((image, "image"), (label, "label")):
        check_image_header(path, source=csv_path, field=f"{where}.{column}", spatial_dims=dims,
                           max_values=settings.max_image_values, min_side=1)
    try:
        counts = check_case(image, label, num_classes, dims)
    except DataError as error:
        column = error.field if error.field in ("image", "label") else ("label" if error.path == label else "image")
        raise DataError(error.path, f"{error.reason} (manifest {csv_path}, {where})", field=f"{where}.{column}") from None
    shape = _shape(image, dims)
    site, split = _site_and_split(rec, columns, csv_path, where)
    # The partition's stratum: the foreground class that fills most of the case.
    dominant = int(np.argmax(counts[1:])) + 1
    row = Row(id=rec.get("id") or Path(rec["image"]).as_posix(), label=dominant, image=image, split=split, site=site)
    return _Case(row=row, label=label, class_voxels=counts, shape=shape)


def _check_unique(cases: Sequence[_Case], csv_path: Path) -> None:
    """One id, one image and one label map per row: a repeated case would sit in two splits at once."""
    seen: dict[tuple[str, str], int] = {}
    for i, case in enumerate(cases):
        for column, key in (("id", case.row.id), ("image", os.path.realpath(case.row.image)), ("label", os.path.realpath(case.label))):
            first = seen.setdefault((column, key), i)
            if first != i:
                raise DataError(csv_path, f"{column} {key!r} is listed twice (first at rows[{first}])", field=f"rows[{i}].{column}")


def _patch_size(cases: Sequence[_Case], settings: ImportSettings, dims: int, csv_path: Path) -> list[int]:
    """``--image-size``, else per axis the largest multiple of 16 up to 96 that fits the smallest case.

    A patch larger than the cases would be mostly padding; multiples of 16 suit UNets of up to 4 levels.
    """
    if settings.image_size is not None:
        if len(settings.image_size) != dims:
            raise DataError(csv_path, f"needs {dims} values for {dims}D cases, got {list(settings.image_size)}", field="image_size")
        return [int(s) for s in settings.image_size]
    smallest = np.min([case.shape[:dims] for case in cases], axis=0)
    return [max(16, min(_MAX_DEFAULT_PATCH, int(side)) // 16 * 16) for side in smallest]


def import_segmentation_manifest(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    class_names: Sequence[str] | None,
    settings: ImportSettings | None = None,
    **options: Any,
) -> dict:
    """Import a segmentation manifest (see the module docstring) into ``out``; returns the summary.

    Args:
        manifest: the CSV file.
        out: output folder (written whole or not at all).
        class_names: the label maps' classes in index order, background first (``background liver tumour``);
            a voxel value outside ``[0, len(class_names))`` is refused.
        settings: the partition and output settings (:class:`ImportSettings`); ``options`` override its fields.

    Example:
        >>> import_segmentation_manifest("cases.csv", "data/seg", class_names=["background", "liver"], num_sites=4)  # doctest: +SKIP
    """
    settings = ImportSettings.resolve(settings, options)
    csv_path = Path(manifest).expanduser().absolute()
    if not csv_path.is_file():
        raise DataError(csv_path, "manifest not found", field="manifest")
    settings.check(csv_path)
    if not class_names or len(class_names) < 2:
        raise DataError(csv_path, "declare the label maps' classes in index order, background first (e.g. "
                                  "--class-names background liver tumour): at least 2", field="class_names")
    columns, records = _read_csv(csv_path)
    dims = _spatial_dims(records[0]["image"], settings)
    cases = [_check_row(rec, i, columns, len(class_names), dims, csv_path, settings) for i, rec in enumerate(records)]
    _check_unique(cases, csv_path)
    patch = _patch_size(cases, settings, dims, csv_path)
    info = {
        "importer": "manifest", "task": "segmentation", "stratified_by": "dominant foreground class",
        # The largest case: an evaluation eval_size at least this large keeps whole volumes (sliding window).
        "max_case_size": [int(s) for s in np.max([c.shape[:dims] for c in cases], axis=0)],
    }
    catalog = Catalog([c.row for c in cases], list(class_names), dims, patch, str(csv_path), info,
                      lambda folder: _place(cases, folder, settings.copy), task="segmentation")
    return import_catalog(out, catalog, settings)


def _place(cases: Sequence[_Case], folder: Path, copy: bool) -> list[dict[str, Any]]:
    """The cases' entry fields (all but ``id``); with ``copy`` the files (or DICOM folders) go under ``images/`` and
    ``labels/``."""
    entries = []
    for i, case in enumerate(cases):
        image, label = case.row.image, case.label
        if copy:
            image, label = (_copy(source, folder / kind / f"{i:06d}-{Path(source).name}") for kind, source in (("images", image), ("labels", label)))
        entries.append({"image": image, "label": label, "class_voxels": list(case.class_voxels)})
    return entries


def _copy(source: str, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    if Path(source).is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return str(target)
