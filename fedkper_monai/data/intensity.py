"""Intensity scaling to [-1, 1] chosen by what the image is: 8-bit by a fixed window, other data by a setting.

8-bit images (PNG, JPEG, the MedMNIST arrays) all share the window 0..255, so a pixel value means the same
brightness in every image and at every site; stretching each image by its own min..max (what a generic
per-image scaling does) gives each image its own contrast. DICOM, NIfTI and 16-bit images have no common
window a config could assume: they are scaled by their own min..max unless a fixed window is set, such
as ``[-1000, 1000]`` for CT in Hounsfield units.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensity, ScaleIntensityRange

__all__ = ["INTENSITY_MODES", "EIGHT_BIT_MODES", "ScaleToUnitRanged"]

#: ``auto``: 8-bit images by the window 0..255, others per image; ``per_image``: every image by its own min..max.
INTENSITY_MODES = ("auto", "per_image")


class ScaleToUnitRanged(MapTransform):
    """Scale ``keys`` to [-1, 1] (docs/design.md, The reference setting: inputs in [-1, 1] learn where [0, 1] stalled).

    Args:
        keys: the image keys.
        intensity_range: ``"auto"`` (default): an image stored as 8-bit maps the fixed window 0..255,
            anything else its own min..max. "Stored as 8-bit": a ``uint8`` array, or an image whose
            metadata (MONAI's ``PILReader``) names an 8-bit PIL mode (``L``, ``RGB``, ``P``, ...), which
            survives the resizing and float conversion before this transform;
            ``"per_image"`` (or ``None``): every image its own min..max; ``[a, b]``: the fixed window
            ``a..b`` for every image, values outside clipped.

    Raises:
        ValueError: an ``intensity_range`` that is none of these.

    Example:
        >>> scale = ScaleToUnitRanged("image")
        >>> scale({"image": torch.tensor([[0, 51, 255]], dtype=torch.uint8)})["image"].tolist()
        [[-1.0, -0.6000000238418579, 1.0]]
    """

    def __init__(self, keys: KeysCollection, intensity_range: str | Sequence[float] | None = "auto", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode, window = _parse(intensity_range)
        self._per_image = ScaleIntensity(minv=-1.0, maxv=1.0)
        self._eight_bit = ScaleIntensityRange(a_min=0.0, a_max=255.0, b_min=-1.0, b_max=1.0, clip=True)
        self._fixed = ScaleIntensityRange(a_min=window[0], a_max=window[1], b_min=-1.0, b_max=1.0, clip=True) if window else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            if self._fixed is not None:
                scale = self._fixed
            elif self.mode == "auto" and _is_eight_bit(image):
                scale = self._eight_bit
            else:
                scale = self._per_image
            out[key] = scale(image)
        return out


def _parse(intensity_range: Any) -> tuple[str, tuple[float, float] | None]:
    if intensity_range is None or intensity_range == "per_image":
        return "per_image", None
    if intensity_range == "auto":
        return "auto", None
    if isinstance(intensity_range, (list, tuple)) and len(intensity_range) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in intensity_range
    ):
        low, high = float(intensity_range[0]), float(intensity_range[1])
        if high > low:
            return "fixed", (low, high)
    raise ValueError(f"intensity_range must be 'auto', 'per_image' or [low, high] with high > low, got {intensity_range!r}")


# PIL modes with 8 bits per channel; "I;16", "I" and "F" (16-bit, 32-bit, float) are not among them.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


def _is_eight_bit(image: Any) -> bool:
    if image.dtype == torch.uint8 or image.dtype == np.uint8:
        return True
    meta = getattr(image, "meta", None) or {}
    return meta.get("mode") in EIGHT_BIT_MODES
