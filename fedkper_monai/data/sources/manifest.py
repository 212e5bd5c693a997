"""Source: a CSV manifest with columns ``image,label`` and optionally ``site``, ``split``, ``id``."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from fedkper_monai.data.federation import SPLITS, Row, import_catalog
from fedkper_monai.data.import_settings import ImportSettings
from fedkper_monai.data.sources.images import file_catalog
from fedkper_monai.errors import DataError

__all__ = ["import_manifest"]

_SPLIT_ALIASES = {"validation": "val", "training": "train"}


def _read_csv(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, records) with keys and values stripped; the required columns checked."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            records = [{(k or "").strip(): (v or "").strip() for k, v in rec.items()} for rec in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(csv_path, f"cannot read CSV: {error}") from None
    for required in ("image", "label"):
        if required not in columns:
            raise DataError(csv_path, f"missing column {required!r} (columns: {columns})", field=required)
    if not records:
        raise DataError(csv_path, "no rows", field="rows")
    return columns, records


def _class_names(raw_labels: Sequence[str], class_names: Sequence[str] | None, csv_path: Path) -> list[str]:
    """The given names; else ``"0".."C-1"`` for numeric labels covering every index up to the largest.

    A label name (``abc``) without ``class_names`` is refused: a typo would silently become a class.
    """
    if class_names is not None:
        return list(class_names)
    for i, value in enumerate(raw_labels):
        if not value.lstrip("-").isdigit():
            raise DataError(csv_path, f"label {value!r} is not a class index; to use label names, map them to indices "
                                      "with --class-names (the names in index order)", field=f"rows[{i}].label")
    present = {int(v) for v in raw_labels}
    missing = sorted(set(range(max(present) + 1)) - present)
    if missing:
        largest = max(present)
        row = next(i for i, v in enumerate(raw_labels) if int(v) == largest)
        raise DataError(csv_path, f"label {largest} implies {largest + 1} classes but classes {missing[:10]} have no "
                                  "image; pass --class-names to declare the classes", field=f"rows[{row}].label")
    return [str(c) for c in range(max(present) + 1)]


def _label(value: str, names: list[str], csv_path: Path, where: str) -> int:
    """A class index from an index or a class name, checked against ``names``."""
    if value.lstrip("-").isdigit():
        label = int(value)
    elif value in names:
        label = names.index(value)
    else:
        raise DataError(csv_path, f"unknown label {value!r}; classes: {names}", field=f"{where}.label")
    if not 0 <= label < len(names):
        raise DataError(csv_path, f"label {label} is out of range [0, {len(names)})", field=f"{where}.label")
    return label


def _site_and_split(rec: dict, columns: Sequence[str], csv_path: Path, where: str) -> tuple[str | None, str | None]:
    """A manifest row's optional ``site`` (never empty) and ``split`` columns (shared by both manifest readers)."""
    site = None
    if "site" in columns:
        if not rec["site"]:
            raise DataError(csv_path, "empty site", field=f"{where}.site")
        site = rec["site"]
    return site, _split(rec["split"], csv_path, where) if "split" in columns else None


def _split(value: str, csv_path: Path, where: str) -> str:
    split = value.lower() or "train"
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise DataError(csv_path, f"split must be train, val or test, got {value!r}", field=f"{where}.split")
    return split


def _row(rec: dict[str, str], where: str, columns: list[str], names: list[str], csv_path: Path) -> Row:
    """One manifest record as a row (image path resolved against the CSV's folder)."""
    label = _label(rec["label"], names, csv_path, where)
    if not rec["image"]:
        raise DataError(csv_path, "empty image path", field=f"{where}.image")
    image = Path(rec["image"]).expanduser()
    image = image if image.is_absolute() else csv_path.parent / image
    site, split = _site_and_split(rec, columns, csv_path, where)
    sample_id = rec.get("id") or Path(rec["image"]).as_posix()
    return Row(id=sample_id, label=label, image=str(image), split=split, site=site)


def import_manifest(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    settings: ImportSettings | None = None,
    **options: Any,
) -> dict:
    """Import a CSV manifest with columns ``image,label`` and optionally ``site``, ``split``, ``id`` into ``out``.

    ``options`` are fields of :class:`~fedkper_monai.data.import_settings.ImportSettings` and override ``settings``.

    ``image`` is a path relative to the CSV's folder or absolute (a DICOM series may be a folder); each image
    once. ``label`` is a class index (every index up to the largest must occur) or, with ``class_names``
    mapping names to indices in order, a class name; a name without ``class_names`` is refused.
    A ``site`` column gives the natural partition (real hospitals; ``num_sites`` is then ignored; sites are
    named site-1..N in sorted order of their values, recorded in the summary). A ``split`` column
    (train/val/test) gives the global splits; otherwise they are carved stratified. ``id`` defaults to the
    image path relative to the CSV's folder.

    Example:
        >>> import_manifest("studies.csv", "data/hospitals", min_samples=20)  # doctest: +SKIP
    """
    settings = ImportSettings.resolve(settings, options)
    csv_path = Path(manifest).expanduser().absolute()
    if not csv_path.is_file():
        raise DataError(csv_path, "manifest not found", field="manifest")
    settings.check(csv_path)
    columns, records = _read_csv(csv_path)
    names = _class_names([rec["label"] for rec in records], class_names, csv_path)
    rows: list[Row] = []
    seen: dict[str, int] = {}
    seen_images: dict[str, int] = {}
    for i, rec in enumerate(records):
        row = _row(rec, f"rows[{i}]", columns, names, csv_path)
        if row.id in seen:
            raise DataError(csv_path, f"duplicate id {row.id!r} (first at rows[{seen[row.id]}])", field=f"rows[{i}].id")
        image_key = os.path.realpath(row.image)
        if image_key in seen_images:
            first = rows[seen_images[image_key]]
            raise DataError(csv_path, f"image {rec['image']!r} is listed twice (first at rows[{seen_images[image_key]}], "
                                      f"label {first.label}; here label {row.label}): one image, one row",
                            field=f"rows[{i}].image")
        seen[row.id] = i
        seen_images[image_key] = i
        rows.append(row)
    catalog = file_catalog(
        rows, fields=[f"rows[{i}].image" for i in range(len(rows))],
        copy_as=[Path(f"{i:06d}-{Path(r.image).name}") for i, r in enumerate(rows)], class_names=names,
        source=csv_path, settings=settings, importer="manifest",
    )
    return import_catalog(out, catalog, settings)
