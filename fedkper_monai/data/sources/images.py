"""Image files shared by the sources: which files are images, size- and decode-checking them, writing arrays as images."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fedkper_monai.data.federation import Catalog, Row
from fedkper_monai.data.import_settings import ImportSettings
from fedkper_monai.data.sources.headers import MAX_IMAGE_VALUES, MIN_IMAGE_SIDE, check_image_header, limit_pil_decoding
from fedkper_monai.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "ProbedImages", "file_catalog", "image_suffix", "probe_images", "progress_bar", "save_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz", ".dcm")


def progress_bar(iterable: Iterable, *, total: int, desc: str, enabled: bool) -> Iterable:
    from tqdm.auto import tqdm

    # Short jobs do not need a bar; long ones (thousands of images) do.
    return tqdm(iterable, total=total, desc=desc, unit="img", disable=not enabled or total < 500, leave=False)


def image_suffix(path: Path) -> str:
    """The lower-case suffix, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def save_image(array: np.ndarray, path: Path, spatial_dims: int) -> None:
    """Write one uint8 array as PNG (2D) or NIfTI (3D)."""
    if spatial_dims == 2:
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(array)).save(path, compress_level=1)
    else:
        import nibabel as nib

        nib.Nifti1Image(np.ascontiguousarray(array), affine=np.eye(4)).to_filename(str(path))


def _spatial_dims_of(image) -> int:
    """2 or 3 from a channel-first image as LoadImage gives it (trailing singleton axes dropped)."""
    squeezed = image
    while squeezed.ndim > 3 and squeezed.shape[-1] == 1:
        squeezed = squeezed[..., 0]
    return 3 if squeezed.ndim == 4 and squeezed.shape[-1] not in (3, 4) else 2


def _decode(loader, path: str, dims: int | None, source: str | os.PathLike, where: str):
    """One image, channel first, with ``dims`` spatial axes (found from the image when None)."""
    from fedkper_monai.data.transforms import EnsureSpatialDimsd

    try:
        image = loader(path)
        dims = dims or _spatial_dims_of(image)
        return EnsureSpatialDimsd("image", spatial_dims=dims)({"image": image})["image"], dims
    except Exception as error:
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise DataError(source, f"cannot read image {path}: {type(cause).__name__}: {cause}", field=where) from None


@dataclass(frozen=True)
class ProbedImages:
    """What decoding every image once found.

    Attributes:
        spatial_dims: 2 or 3.
        sizes: each spatial size met (``--image-size`` order) -> the first image of that size and its field.
    """

    spatial_dims: int
    sizes: dict[tuple[int, ...], tuple[str, str]]

    @property
    def common_size(self) -> list[int] | None:
        """The one size all images share, None when they differ."""
        return list(next(iter(self.sizes))) if len(self.sizes) == 1 else None

    def size_error(self, source: str | os.PathLike) -> DataError:
        """The refusal of images that differ in size, naming the first two files that differ."""
        (first_size, (first, _)), (other_size, (other, where)) = list(self.sizes.items())[:2]
        shown = lambda size: "x".join(str(side) for side in size)  # noqa: E731
        return DataError(source, f"images differ in size ({other} is {shown(other_size)}, {first} is "
                                 f"{shown(first_size)}): pass --image-size to resize them all to one size", field=where)


def probe_images(
    paths: Sequence[str], *, fields: Sequence[str], source: str | os.PathLike, spatial_dims: int | None, progress: bool,
    channels: int | None = None, max_values: int = MAX_IMAGE_VALUES, min_side: int = MIN_IMAGE_SIDE,
) -> ProbedImages:
    """Decode every image once (a corrupt file fails here, before any output), return what they hold.

    ``fields`` names each image in errors. Refused, naming the file: an image whose header declares more
    than ``max_values`` values or a side under ``min_side`` pixels (before it is decoded), NaN or infinite
    values, and images that mix channel counts (gray and RGB; an alpha channel aside) unless ``channels``
    says what every image becomes.
    """
    from monai.transforms import LoadImage

    limit_pil_decoding(max_values)
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    sizes: dict[tuple[int, ...], tuple[str, str]] = {}
    first_of_channels: dict[int, str] = {}
    dims = spatial_dims
    for path, where in progress_bar(zip(paths, fields), total=len(paths), desc="checking images", enabled=progress):
        if not Path(path).exists():
            raise DataError(source, f"image file not found: {path}", field=where)
        check_image_header(path, source=source, field=where, spatial_dims=dims, max_values=max_values, min_side=min_side)
        image, dims = _decode(loader, path, dims, source, where)
        if image.is_floating_point() and not bool(image.isfinite().all()):
            raise DataError(source, f"image {path} holds NaN or infinite values", field=where)
        count = {2: 1, 4: 3}.get(int(image.shape[0]), int(image.shape[0]))  # alpha carries no diagnosis
        first_of_channels.setdefault(count, path)
        if len(first_of_channels) > 1 and channels is None:
            mixed = ", ".join(f"{first} has {n}" for n, first in sorted(first_of_channels.items()))
            raise DataError(source, f"images mix channel counts ({mixed}): pass --channels 1 or 3 to convert each",
                            field=where)
        sizes.setdefault(tuple(int(s) for s in image.shape[1:]), (path, where))
    return ProbedImages(dims or 2, sizes)


def file_catalog(
    rows: Sequence[Row],
    *,
    fields: Sequence[str],
    copy_as: Sequence[Path],
    class_names: Sequence[str],
    source: Path,
    settings: ImportSettings,
    importer: str,
) -> Catalog:
    """The catalog of image files (class folders, manifests), every image decoded once first.

    Args:
        rows: one row per image file (``row.image`` is its path).
        fields: how errors name each row (``ct/01.dcm``, ``rows[3].image``).
        copy_as: path of each image under ``out/images`` when ``settings.copy``.
        class_names: names of the classes in label order.
        source: the folder or manifest (for errors and the summary).
        importer: ``"folders"`` or ``"manifest"`` (recorded in the summary).
    """
    probed = probe_images(
        [r.image for r in rows], fields=fields, source=source, spatial_dims=settings.spatial_dims,
        progress=settings.progress, channels=settings.channels, max_values=settings.max_image_values,
        min_side=settings.min_image_side,
    )
    dims, image_size = probed.spatial_dims, settings.image_size
    if image_size is None:
        if probed.common_size is None:
            raise probed.size_error(source)
        image_size = probed.common_size
    if len(image_size) != dims:
        raise DataError(source, f"--image-size needs {dims} values for {dims}D images, got {list(image_size)}",
                        field="image_size")

    def place_images(folder: Path) -> list[str]:
        if not settings.copy:
            return [str(Path(r.image)) for r in rows]
        placed = []
        for row, relative in zip(rows, copy_as):
            target = folder / "images" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(row.image, target)
            placed.append(str(target))
        return placed

    return Catalog(rows, list(class_names), dims, image_size, str(source), {"importer": importer}, place_images,
                   channels=settings.channels)
