"""Reading images and label maps for segmentation, and checking a case at ``prepare`` time.

One function reads every format a segmentation datalist may name, with its geometry:

- NIfTI (``.nii``, ``.nii.gz``) through nibabel;
- a DICOM series (a folder of slices) as one volume through SimpleITK's series reader, which orders the
  slices by position and gives the volume its origin, spacing and direction;
- a 2D mask or image (PNG, JPEG, BMP, TIFF) through Pillow;
- anything else SimpleITK reads (``.mha``, ``.nrrd``, a single ``.dcm``).

:func:`check_case` turns the usual mistakes into errors naming the file and the field, before any site
trains: image and label of different shapes or geometry, label values outside the declared classes, an
empty label map, a 4D volume where 3D is expected.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedkper_monai.errors import DataError

__all__ = ["read_volume", "check_case"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of an image or label map; the array in the file's voxel order (x, y[, z]).

    The affine maps voxel indices to millimetres (identity for 2D images). DICOM and other SimpleITK formats
    are returned in the same (x, y, z) order as NIfTI.

    Raises:
        DataError: the file (or folder) cannot be read, naming it.
    """
    source = Path(path)
    name = source.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            image = nib.load(str(source))
            return np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)
        if name.endswith(_IMAGE_SUFFIXES):
            from PIL import Image

            with Image.open(source) as picture:
                # (H, W) rows first on disk; (x, y) as MONAI's PIL reader gives it.
                return np.asarray(picture).swapaxes(0, 1), np.eye(3)
        return _read_sitk(source)
    except DataError:
        raise
    except Exception as error:  # nibabel, Pillow and SimpleITK raise their own types
        raise DataError(source, f"cannot read: {type(error).__name__}: {error}") from None


def _read_sitk(source: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    if source.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(source))
        if not series:
            raise DataError(source, "no DICOM series in this folder")
        if len(series) > 1:
            raise DataError(source, f"{len(series)} DICOM series in one folder; give each its own folder")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(source), series[0]))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(source))
    # SimpleITK arrays are (z, y, x); transpose to (x, y, z) like nibabel.
    array = sitk.GetArrayFromImage(image).transpose()
    dims = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dims, dims)
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = direction * np.asarray(image.GetSpacing())
    affine[:dims, dims] = image.GetOrigin()
    # ITK is LPS, NIfTI RAS: flip x and y so both readers give the same world coordinates.
    if dims >= 2:
        affine[:2] *= -1
    return array, affine


def check_case(image: str | os.PathLike, label: str | os.PathLike, num_classes: int, spatial_dims: int) -> list[int]:
    """Check one segmentation case and return its voxels per class (``num_classes`` counts).

    Raises:
        DataError: naming the file and the field: a 4D volume where ``spatial_dims`` are expected, image and
            label of different shapes or geometry, label values that are not class indices in
            ``[0, num_classes)``, or a label map without foreground; NaN or infinite image voxels.
    """
    image_array, image_affine = read_volume(image)
    label_array, label_affine = read_volume(label)
    image_shape = image_array.shape[:spatial_dims]
    if image_array.ndim > spatial_dims and not (image_array.ndim == spatial_dims + 1 and spatial_dims == 2):
        raise DataError(image, f"has {image_array.ndim} dimensions {image_array.shape}, expected a {spatial_dims}D image", field="image")
    if np.issubdtype(image_array.dtype, np.floating) and not np.isfinite(image_array).all():
        raise DataError(image, "holds NaN or infinite voxel values", field="image")
    label_array = np.squeeze(label_array)
    if label_array.ndim != spatial_dims:
        raise DataError(label, f"label map has shape {label_array.shape}, expected {spatial_dims}D", field="label")
    if label_array.shape != image_shape:
        raise DataError(label, f"label map shape {label_array.shape} differs from the image's {image_shape} ({image})", field="label")
    if image_affine.shape == label_affine.shape and not np.allclose(image_affine, label_affine, atol=1e-3):
        raise DataError(label, f"label map geometry (affine) differs from the image's ({image})", field="label")
    values = np.unique(label_array)
    if not np.all(np.equal(np.mod(values, 1), 0)) or values.min() < 0 or values.max() >= num_classes:
        shown = ", ".join(f"{v:g}" for v in values[:10])
        raise DataError(label, f"label values {shown} are not class indices in [0, {num_classes})", field="label")
    counts = np.bincount(label_array.astype(np.int64).ravel(), minlength=num_classes)
    if counts[1:].sum() == 0:
        raise DataError(label, "label map has no foreground voxel (all background)", field="label")
    return [int(c) for c in counts]
