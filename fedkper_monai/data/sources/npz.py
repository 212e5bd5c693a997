"""Source: MedMNIST-layout ``.npz`` arrays (2D and 3D), a local file or downloaded by name.

The train split is partitioned over the sites, ``val`` becomes the global validation list and ``test`` the
global test list. The images are written as PNG (2D) or NIfTI (3D) under ``out/images/<split>/``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fedkper_monai.data.federation import (
    SPLITS,
    Catalog,
    Row,
    import_catalog,
    partition_facts,
)
from fedkper_monai.data.import_settings import ImportSettings
from fedkper_monai.data.sources.headers import MAX_IMAGE_VALUES, MIN_IMAGE_SIDE, array_size
from fedkper_monai.data.sources.images import progress_bar, save_image
from fedkper_monai.errors import DataError

__all__ = ["array_catalog", "import_medmnist", "load_npz_splits"]

Splits = Mapping[str, tuple[np.ndarray, np.ndarray]]


def _check_split(npz_path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DataError(npz_path, f"labels have shape {labels.shape}: multi-label sets are not supported", field=f"{split}_labels")
    if labels.reshape(-1).size != images.shape[0]:
        raise DataError(npz_path, f"{images.shape[0]} images but {labels.reshape(-1).size} labels", field=f"{split}_labels")
    if images.ndim not in (3, 4):
        raise DataError(npz_path, f"images have shape {images.shape}; expected (N,H,W), (N,H,W,3) or (N,D,H,W)", field=f"{split}_images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(npz_path, f"labels must be integers, got {labels.dtype}", field=f"{split}_labels")
    if images.dtype != np.uint8:
        # PNG and the 0..255 intensity window expect 8-bit images (MedMNIST's layout); floats would fail or be
        # rescaled silently, and may hold NaN.
        raise DataError(npz_path, f"images must be uint8 (0..255, MedMNIST's layout), got {images.dtype}; scale and "
                                  "convert them first", field=f"{split}_images")


def _check_header(archive, key: str, npz_path: Path, max_values: int, min_side: int) -> None:
    """Refuse images too large or too small by the ``.npy`` header, before the array is decompressed."""
    with archive.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(member)
    if len(shape) not in (3, 4):
        return  # _check_split names the shape
    size = array_size(shape[1:], None)
    if size.values > max_values:
        raise DataError(npz_path, f"each image is {size} by the array header ({size.values:,} values), above the limit "
                                  f"of {max_values:,} values (--max-image-values): refused before decompressing", field=key)
    if min(size.sides) < min_side:
        raise DataError(npz_path, f"each image is {size} by the array header, a side under the minimum of {min_side} "
                                  "pixels (--min-image-side)", field=key)


def load_npz_splits(
    path: str | os.PathLike, *, max_image_values: int = MAX_IMAGE_VALUES, min_image_side: int = MIN_IMAGE_SIDE
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a MedMNIST-layout ``.npz``: ``{split: (images, labels)}`` for train, val, test.

    Images are uint8 (N, H, W), (N, H, W, 3) or volumes (N, D, H, W); labels (N,) or (N, 1). Each image's
    size is checked from the array header (``max_image_values``, ``min_image_side``) before decompressing.

    Raises:
        DataError: unreadable or truncated file, missing keys, mismatched lengths, multi-label labels, images
            above the size limit or with a side under the minimum.
    """
    npz_path = Path(path).expanduser().absolute()
    if not npz_path.is_file():
        raise DataError(npz_path, "file not found", field="npz")
    with open(npz_path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PK\x03\x04":
        # np.load would read a text file as a pickle and refuse it as one: say what the file is not.
        raise DataError(npz_path, "not a .npz archive (a .npz is a zip of .npy arrays, this file does not start "
                                  "like a zip); is it a text or HTML file?", field="npz")
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with np.load(npz_path, allow_pickle=False) as archive:
            keys = set(archive.files)
            for split in SPLITS:
                image_key, label_key = f"{split}_images", f"{split}_labels"
                if image_key not in keys or label_key not in keys:
                    if split == "train":
                        raise DataError(npz_path, f"missing key {image_key!r} or {label_key!r}", field=image_key)
                    continue
                _check_header(archive, image_key, npz_path, max_image_values, min_image_side)
                splits[split] = (archive[image_key], archive[label_key])
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as error:
        raise DataError(npz_path, f"cannot read .npz (truncated or corrupt?): {type(error).__name__}: {error}") from None
    for split, (images, labels) in splits.items():
        _check_split(npz_path, split, images, labels)
    return splits


def _array_kind(images: np.ndarray, spatial_dims: int | None) -> int:
    """2 for (N,H,W) and (N,H,W,3|4); 3 for (N,D,H,W) volumes (or as forced)."""
    if spatial_dims is not None:
        return spatial_dims
    if images.ndim == 3:
        return 2
    return 2 if images.shape[-1] in (3, 4) else 3


def _labels_and_names(
    splits: Splits, class_names: Sequence[str] | None, source: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Flat int64 labels per split and the class names, every label checked against them."""
    labels = {s: np.asarray(y).reshape(-1).astype(np.int64) for s, (_, y) in splits.items()}
    all_labels = np.concatenate(list(labels.values()))
    if all_labels.size and all_labels.min() < 0:
        raise DataError(source, f"negative label {int(all_labels.min())}", field="labels")
    num_classes = len(class_names) if class_names is not None else int(all_labels.max()) + 1
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    missing = sorted(set(range(num_classes)) - set(np.unique(all_labels).tolist()))
    if class_names is None and missing:
        # Classes are 0..max label: a stray label (7 among 0..4) would silently add empty classes.
        split, y = next((s, y) for s, y in labels.items() if y.size and y.max() == num_classes - 1)
        bad = int(np.flatnonzero(y == num_classes - 1)[0])
        raise DataError(source, f"label {num_classes - 1} implies {num_classes} classes but classes {missing[:10]} "
                                "have no sample; pass --class-names to declare the classes", field=f"{split}_labels[{bad}]")
    for split, y in labels.items():
        if y.size and y.max() >= num_classes:
            bad = int(np.flatnonzero(y >= num_classes)[0])
            raise DataError(source, f"label {int(y[bad])} is out of range [0, {num_classes})", field=f"{split}_labels[{bad}]")
    return labels, names


def array_catalog(
    splits: Splits,
    *,
    class_names: Sequence[str] | None,
    settings: ImportSettings,
    source: str = "",
    info: Mapping[str, Any] | None = None,
) -> Catalog:
    """The catalog of MedMNIST-layout arrays; images are written only when the writer places them.

    Args:
        splits: ``{split: (images, labels)}`` as :func:`load_npz_splits` returns.
        class_names: names of the classes; default ``"0".."C-1"``.
        settings: the import settings (``spatial_dims`` forces 2D/3D; ``image_size`` and ``copy`` are unused).
        source: where the arrays came from (summary and errors).
        info: extra facts for ``summary.json`` (``importer``, ...), after the partition facts.
    """
    train_images = splits["train"][0]
    dims = _array_kind(train_images, settings.spatial_dims)
    labels, names = _labels_and_names(splits, class_names, source)
    rows = [
        Row(id=f"{split}-{i:06d}", label=int(y[i]), split=split) for split, y in labels.items() for i in range(y.size)
    ]
    suffix = ".png" if dims == 2 else ".nii.gz"

    def place_images(folder: Path) -> list[str]:
        paths = []
        for split, (images, _) in splits.items():
            split_dir = folder / "images" / split
            split_dir.mkdir(parents=True, exist_ok=True)
            count = images.shape[0]
            for i in progress_bar(range(count), total=count, desc=f"writing {split}", enabled=settings.progress):
                path = split_dir / f"{split}-{i:06d}{suffix}"
                save_image(images[i], path, dims)
                paths.append(str(path))
        return paths

    # summary.json lists the partition before the importer for arrays (as it always has).
    facts = {**partition_facts(settings.partition, settings), **dict(info or {})}
    return Catalog(rows, names, dims, list(train_images.shape[1 : 1 + dims]), source, facts, place_images)


def _known_class_names(npz_path: Path, flag: str | None) -> Sequence[str] | None:
    """Class names from the MedMNIST table when the flag (or the file name) is a MedMNIST name."""
    from fedkper_monai.data.medmnist import MEDMNIST

    known = MEDMNIST.get(flag.lower() if flag else npz_path.stem.lower().split("_")[0])
    return known.class_names if known is not None else None


def import_medmnist(
    out: str | os.PathLike,
    *,
    settings: ImportSettings | None = None,
    npz: str | os.PathLike | None = None,
    flag: str | None = None,
    size: int = 28,
    class_names: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    **options: Any,
) -> dict:
    """Import a MedMNIST ``.npz`` (a local file, or downloaded by ``flag``) into ``out``.

    Args:
        out: output folder (see :mod:`fedkper_monai.data.federation` for its layout).
        settings: the partition and output settings; ``options`` (its field names: ``num_sites``, ``alpha``,
            ``seed``, ``partition``, ``min_samples``, ``local_test_fraction``, ``overwrite``, ``progress``)
            override them.
        npz: local ``.npz`` path; or
        flag: MedMNIST name (``bloodmnist``, ``organcmnist``, ``organmnist3d``, ...), downloaded with an MD5 check.
        size: image size of the download (28, 64, 128, 224).
        class_names: names of the classes; default from the MedMNIST table when the file name matches a flag,
            else ``"0".."C-1"``.
        cache_dir, mirror: where downloads are kept and fetched from (see ``download_medmnist``).

    Returns:
        the summary dict.

    Example:
        >>> import_medmnist("data/retina", npz="retinamnist.npz", num_sites=20, alpha=0.1)  # doctest: +SKIP
    """
    from fedkper_monai.data.medmnist import download_medmnist

    settings = ImportSettings.resolve(settings, options)
    if (npz is None) == (flag is None):
        raise DataError(str(out), "give exactly one of --npz PATH or --flag NAME", field="npz/flag")
    if npz is None:
        npz = download_medmnist(str(flag), size, cache_dir=cache_dir, mirror=mirror, progress=settings.progress)
    npz_path = Path(npz).expanduser().absolute()
    settings.check(npz_path)
    splits = load_npz_splits(npz_path, max_image_values=settings.max_image_values, min_image_side=settings.min_image_side)
    if class_names is None:
        class_names = _known_class_names(npz_path, flag)
    catalog = array_catalog(
        splits, class_names=class_names, settings=settings, source=str(npz_path), info={"importer": "medmnist"}
    )
    return import_catalog(out, catalog, settings)
