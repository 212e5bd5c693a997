"""Source: a class-folder tree ``root/<class_name>/<images>`` (or ``root/{train,val,test}/<class_name>/<images>``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedkper_monai.data.federation import SPLITS, Row, import_catalog
from fedkper_monai.data.import_settings import ImportSettings
from fedkper_monai.data.sources.images import IMAGE_SUFFIXES, file_catalog, image_suffix
from fedkper_monai.errors import DataError

__all__ = ["import_folders"]


def _images_in(class_dir: Path) -> list[Path]:
    """Image files below ``class_dir`` (any depth, hidden files and folders skipped), sorted."""
    return sorted(
        p for p in class_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        and image_suffix(p) in IMAGE_SUFFIXES
    )


def _split_roots(base: Path) -> dict[str, Path]:
    """``{split: folder}`` when ``base`` holds ``train/`` and ``test/`` (and maybe ``val/``), else ``{"": base}``."""
    split_roots = {s: base / s for s in SPLITS if (base / s).is_dir()}
    return split_roots if "train" in split_roots and "test" in split_roots else {"": base}


def import_folders(
    root: str | os.PathLike, out: str | os.PathLike, *, settings: ImportSettings | None = None, **options: Any
) -> dict:
    """Import a class-folder tree ``root/<class_name>/*.png|jpg|nii|nii.gz|dcm`` into ``out``.

    ``options`` are fields of :class:`~fedkper_monai.data.import_settings.ImportSettings` and override
    ``settings`` (``num_sites`` is needed).

    Classes are the sub-folder names in sorted order. If ``root`` holds ``train/`` and ``test/`` (and
    optionally ``val/``) sub-folders, each with class folders, those are the global splits; otherwise a
    stratified ``global_test_fraction`` / ``global_val_fraction`` of the pool is held out. Images stay where
    they are (absolute paths in the datalists) unless ``copy``, which copies them under ``out/images``.
    Every image is decoded once first: a corrupt file stops the import before anything is written.

    Example:
        >>> import_folders("scans/", "data/scans", num_sites=4, alpha=0.5, image_size=[64, 64])  # doctest: +SKIP
    """
    settings = ImportSettings.resolve(settings, options)
    base = Path(root).expanduser().absolute()
    if not base.is_dir():
        raise DataError(base, "folder not found", field="root")
    settings.check(base)
    roots = _split_roots(base)
    class_names = sorted(
        {d.name for r in roots.values() for d in r.iterdir() if d.is_dir() and not d.name.startswith(".")}
    )
    if not class_names:
        raise DataError(base, "no class folders found (expected root/<class_name>/<images>)", field="root")
    rows: list[Row] = []
    relatives: list[Path] = []
    for split, split_root in roots.items():
        for label, name in enumerate(class_names):
            class_dir = split_root / name
            files = _images_in(class_dir) if class_dir.is_dir() else []
            for path in files:
                relative = path.relative_to(base)
                rows.append(Row(id=relative.as_posix(), label=label, image=str(path), split=split or None))
                relatives.append(relative)
    if not rows:
        raise DataError(base, f"no images with suffix {', '.join(IMAGE_SUFFIXES)} in the class folders", field="root")
    empty = sorted(set(class_names) - {class_names[row.label] for row in rows})
    if empty:
        raise DataError(base / empty[0], f"class folder holds no image ({', '.join(IMAGE_SUFFIXES)}): a class without "
                                         "samples cannot be learned; remove the folder or add its images",
                        field="root")
    catalog = file_catalog(
        rows, fields=[r.id for r in rows], copy_as=relatives, class_names=class_names, source=base,
        settings=settings, importer="folders",
    )
    return import_catalog(out, catalog, settings)
