"""An image's size from its file header, checked against the size limits before any pixel is decoded.

A PNG of one colour compresses 13000x13000 RGB into half a megabyte; decoding it takes gigabytes. So every
image a file importer, ``predict`` or a site reads is first sized from its header alone (Pillow's lazy open,
nibabel's header, pydicom without pixel data, SimpleITK's ``ReadImageInformation``, a ``.npy`` header) and
refused, naming the file, the size and the limit, when it is larger than :data:`MAX_IMAGE_VALUES` or has a
side shorter than :data:`MIN_IMAGE_SIDE`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from fedkper_monai.errors import DataError

__all__ = [
    "MAX_IMAGE_VALUES", "MIN_IMAGE_SIDE", "HeaderSize", "array_size", "check_image_header", "header_size", "limit_pil_decoding",
]

#: Largest image accepted, in values: width x height [x depth] x channels. 2**28 values are 1 GiB as float32
#: (what MONAI's reader makes of them): a 16384x16384 gray image, 9459x9459 RGB, a 512x512x1024 CT volume.
MAX_IMAGE_VALUES = 2**28
#: Shortest side accepted, in pixels: a smaller image carries almost nothing, and resizing it to the task
#: size invents the rest (a 1x1 PNG became a uniform 28x28 image). Not the task size: resizing 200 to 224 is
#: ordinary, 1 to 28 is not.
MIN_IMAGE_SIDE = 8

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


@dataclass(frozen=True)
class HeaderSize:
    """The size an image header declares.

    Attributes:
        sides: spatial sides in the file's order (width, height[, depth] for Pillow and DICOM; x, y[, z] for NIfTI).
        channels: values per pixel (3 for RGB, the 4th and later NIfTI axes multiplied).
    """

    sides: tuple[int, ...]
    channels: int = 1

    @property
    def values(self) -> int:
        return math.prod(self.sides) * self.channels

    def __str__(self) -> str:
        shown = "x".join(str(side) for side in self.sides)
        return shown if self.channels == 1 else f"{shown} with {self.channels} channels"


def array_size(shape: tuple[int, ...], spatial_dims: int | None) -> HeaderSize:
    """Spatial sides and channels of an array shape (NIfTI, ``.npy``, one image of a ``.npz``), as the readers lay them out."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if spatial_dims is None:  # as EnsureSpatialDimsd reads it: a last axis of 3 or 4 is colour
        spatial_dims = 2 if len(shape) <= 2 or (len(shape) == 3 and shape[-1] in (3, 4)) else 3
    return HeaderSize(shape[:spatial_dims], math.prod(shape[spatial_dims:]))


def _pil_size(path: Path) -> HeaderSize:
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow warns above its own pixel guard while opening; the size is judged here instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as picture:  # reads the header only
            frames = int(getattr(picture, "n_frames", 1) or 1)
            sides = (*picture.size, frames) if frames > 1 else tuple(picture.size)
            return HeaderSize(tuple(int(s) for s in sides), len(picture.getbands()))


def _dicom_size(paths: list[Path]) -> HeaderSize:
    import pydicom

    rows = columns = samples = frames = 0
    for path in paths:
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            if len(paths) == 1:
                raise
            continue  # a series folder may hold other files (DICOMDIR, notes); its reader skips them too
        rows, columns = max(rows, int(header.Rows)), max(columns, int(header.Columns))
        samples = max(samples, int(getattr(header, "SamplesPerPixel", 1) or 1))
        frames += int(getattr(header, "NumberOfFrames", 1) or 1)
    if not frames:
        raise ValueError("no DICOM file in this folder")
    return HeaderSize((columns, rows) if frames == 1 else (columns, rows, frames), samples)


def _npy_size(path: Path, spatial_dims: int | None) -> HeaderSize:
    import numpy as np

    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(handle)
    return array_size(shape, spatial_dims)


def _sitk_size(path: Path) -> HeaderSize:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return HeaderSize(tuple(int(s) for s in reader.GetSize()), int(reader.GetNumberOfComponents()))


def header_size(path: str | os.PathLike, spatial_dims: int | None = None) -> HeaderSize:
    """The size ``path`` declares in its header, without decoding its pixels.

    A folder is a DICOM series (its files' frames added up); ``spatial_dims`` says how to read a NIfTI or
    ``.npy`` shape (default: as the transform configs would).

    Raises:
        Exception: whatever the header reader raises for a file it cannot read (the caller names the file).
    """
    source = Path(path)
    name = source.name.lower()
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError("empty folder (a DICOM series folder holds its slices)")
        return _dicom_size(files)
    if name.endswith(_PIL_SUFFIXES):
        return _pil_size(source)
    if name.endswith((".nii", ".nii.gz", ".hdr", ".img")):
        import nibabel as nib

        return array_size(nib.load(str(source)).shape, spatial_dims)  # nibabel reads the data lazily
    if name.endswith(".dcm"):
        return _dicom_size([source])
    if name.endswith(".npy"):
        return _npy_size(source, spatial_dims)
    return _sitk_size(source)


def limit_pil_decoding(max_values: int = MAX_IMAGE_VALUES) -> None:
    """Make Pillow's own decompression-bomb guard refuse exactly the images above ``max_values`` pixels.

    Pillow refuses above twice ``Image.MAX_IMAGE_PIXELS`` and only warns below (its default refuses from 179 M
    pixels and merely warns for the issue's 169 M-pixel RGB PNG). Set to half the limit, Pillow's refusal
    agrees with the header check wherever Pillow decodes in this process (MONAI's reader, ``predict``): it
    never decodes an image of more pixels than the limit allows values.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max(1, max_values // 2)


def check_image_header(
    path: str | os.PathLike,
    *,
    source: str | os.PathLike,
    field: str | None,
    spatial_dims: int | None = None,
    max_values: int = MAX_IMAGE_VALUES,
    min_side: int = MIN_IMAGE_SIDE,
) -> HeaderSize:
    """Refuse an image too large or too small by its header, before it is decoded; return its size.

    Args:
        path: the image file (or DICOM series folder).
        source, field: what the error names (the folder or manifest, and the row).
        spatial_dims: how to read an array shape (see :func:`header_size`).
        max_values: the limit in values (:data:`MAX_IMAGE_VALUES`, ``--max-image-values``).
        min_side: the shortest side allowed (:data:`MIN_IMAGE_SIDE`, ``--min-image-side``).

    Raises:
        DataError: naming the file, its size and the limit; or that its header cannot be read.
    """
    from PIL import Image

    try:
        size = header_size(path, spatial_dims)
    except Image.DecompressionBombError as error:  # Pillow's guard (limit_pil_decoding) refused it while opening
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow opens"
        raise DataError(source, f"image {path} has {pixels} by its header, above the limit of {max_values:,} values "
                                "(--max-image-values): refused before decoding", field=field) from None
    except Exception as error:
        raise DataError(source, f"cannot read image {path}: {type(error).__name__}: {error}", field=field) from None
    if size.values > max_values:
        raise DataError(source, f"image {path} is {size} by its header ({size.values:,} values), above the limit of "
                                f"{max_values:,} values (--max-image-values): refused before decoding", field=field)
    if size.sides and min(size.sides) < min_side:
        raise DataError(source, f"image {path} is {size} by its header, a side under the minimum of {min_side} pixels "
                                "(--min-image-side): resizing it to the task size would invent the image", field=field)
    return size
