"""Two small MONAI dictionary transforms the ``transforms/*.json`` configs use beside MONAI's own.

MONAI has no transform that makes a mixed grayscale/RGB collection uniform, nor one that turns a 2D image
stored with a trailing singleton or colour axis (some DICOM and NIfTI writers do this) into ``(C, H, W)``.
"""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["EnsureSpatialDimsd", "ToChannelsd"]

# ITU-R BT.601 luma weights: the usual RGB -> gray conversion (PIL's "L" mode uses the same).
_LUMA = (0.299, 0.587, 0.114)


def _source_name(data: Mapping[Hashable, object], key: Hashable) -> str:
    meta = getattr(data[key], "meta", None) or {}
    return str(meta.get("filename_or_obj", "<in-memory image>"))


class EnsureSpatialDimsd(MapTransform):
    """Make a channel-first image have exactly ``spatial_dims`` spatial axes, or fail naming the file.

    For a 2D task a ``(1, H, W, 1)`` array loses its trailing singleton axis and a ``(1, H, W, 3|4)`` array
    (colour stored last, unrecognised by the reader) becomes ``(3|4, H, W)``. Anything else with the wrong
    number of axes raises ``ValueError`` with the file name: a 3D volume in a 2D pipeline is a user error.

    Args:
        keys: keys of the images (channel-first tensors).
        spatial_dims: 2 or 3.
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            while image.ndim > self.spatial_dims + 1 and image.shape[-1] == 1:
                image = image[..., 0]
            if image.ndim == self.spatial_dims + 2 and image.shape[0] == 1 and image.shape[-1] in (3, 4):
                image = torch.movedim(image[0], -1, 0)
            if image.ndim != self.spatial_dims + 1:
                raise ValueError(
                    f"{_source_name(d, key)}: image has shape {tuple(image.shape)} (channel first), "
                    f"expected {self.spatial_dims} spatial axes: use the {image.ndim - 1}D transform config "
                    f"or convert the file"
                )
            d[key] = image
        return d


class ToChannelsd(MapTransform):
    """Make every image carry the same number of channels.

    Args:
        keys: keys of the channel-first images.
        channels: None keeps the channels as stored (an alpha channel is always dropped); 1 converts RGB to
            gray with BT.601 luma weights; 3 repeats a gray channel three times.
    """

    def __init__(self, keys: KeysCollection, channels: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be null, 1 or 3, got {channels!r}")
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] in (2, 4):  # gray+alpha or RGBA: alpha carries no diagnosis
                image = image[: image.shape[0] - 1]
            if self.channels == 1 and image.shape[0] == 3:
                weights = torch.as_tensor(_LUMA, dtype=image.dtype, device=image.device)
                image = (image * weights.view(3, *([1] * (image.ndim - 1)))).sum(0, keepdim=True)
            elif self.channels == 3 and image.shape[0] == 1:
                image = image.repeat(3, *([1] * (image.ndim - 1)))
            if self.channels is not None and image.shape[0] != self.channels:
                raise ValueError(f"{_source_name(d, key)}: cannot make {image.shape[0]} channels into {self.channels}")
            d[key] = image
        return d

    def __repr__(self) -> str:
        return f"{type(self).__name__}(keys={list(self.keys)}, channels={self.channels})"

