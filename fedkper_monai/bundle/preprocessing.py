"""A run's transform config as inference preprocessing in a bundle that needs no import of this package.

The training configs in ``transforms/`` use three transforms of this package (``ScaleToUnitRanged``,
``EnsureSpatialDimsd``, ``ToChannelsd``). For a bundle they are replaced by MONAI ``Lambdad`` transforms
computing the same thing (intensity to [-1, 1] by the same rule; drop a trailing singleton axis; drop
alpha, RGB -> gray with BT.601 weights or gray -> RGB); label transforms and random augmentation are
dropped. Every other entry (reader, resize) is
copied as it is, with the config's settings (``image_size``, ``channels``, ``intensity_range``), so the
bundle sees an image exactly as the site's evaluation did.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fedkper_monai.data.intensity import EIGHT_BIT_MODES
from fedkper_monai.errors import FedKPerError

__all__ = ["IMAGE_SUFFIXES", "inference_preprocessing"]

#: Files a bundle's inference picks up in ``dataset_dir`` (the readers of the transform configs).
IMAGE_SUFFIXES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm"]

_PACKAGES = ("fedkper_monai.data.transforms.", "fedkper_monai.data.intensity.")

_SPATIAL_DIMS = "$lambda x: x[..., 0] if x.ndim > @spatial_dims + 1 and x.shape[-1] == 1 else x"
# Same rules as ToChannelsd: alpha dropped, then 1 = luma of RGB, 3 = gray repeated, null = as stored.
_CHANNELS = (
    "$lambda x: (lambda y: "
    "(y * torch.tensor([0.299, 0.587, 0.114], dtype=y.dtype).view(3, *[1] * (y.ndim - 1))).sum(0, keepdim=True) "
    "if @channels == 1 and y.shape[0] == 3 else "
    "(y.repeat(3, *[1] * (y.ndim - 1)) if @channels == 3 and y.shape[0] == 1 else y))"
    "(x[: x.shape[0] - 1] if x.shape[0] in (2, 4) else x)"
)
# Same rules as ScaleToUnitRanged (fedkper_monai.data.intensity): a window [a, b] for every image; "auto" the
# window 0..255 for 8-bit images; else each image by its own min..max (a constant image times -1, as MONAI's).
_INTENSITY = (
    "$lambda x: (lambda r, y: ((y - r[0]) / (r[1] - r[0]) * 2 - 1).clamp(-1, 1) if isinstance(r, (list, tuple)) else "
    "(((y / 255) * 2 - 1).clamp(-1, 1) if r == 'auto' and (x.dtype == torch.uint8 or getattr(x, 'meta', {}).get('mode') in "
    f"{sorted(EIGHT_BIT_MODES)!r}) else "
    "((y - y.min()) / (y.max() - y.min()) * 2 - 1 if y.max() > y.min() else -y)))(@intensity_range, x.float())"
)
_REPLACEMENTS = {
    "EnsureSpatialDimsd": {"_target_": "Lambdad", "keys": "image", "func": _SPATIAL_DIMS},
    "ToChannelsd": {"_target_": "Lambdad", "keys": "image", "func": _CHANNELS},
    "ScaleToUnitRanged": {"_target_": "Lambdad", "keys": "image", "func": _INTENSITY},
}


def _is_label_only(entry: dict[str, Any]) -> bool:
    keys = entry.get("keys")
    return keys == "label" or keys == ["label"]


def _is_augmentation(entry: dict[str, Any]) -> bool:
    return str(entry.get("_disabled_", "")).replace(" ", "") == "$not@augment"


def inference_preprocessing(transforms: str, image_size: Sequence[int] | None) -> dict[str, Any]:
    """Bundle config entries ``transforms`` and ``preprocessing`` (with their settings) for a run's config.

    Args:
        transforms: the run's transform config name or path (``classification_2d``, ...).
        image_size: the network's input size (the run's ``network.image_size``), or None for the config's.

    Returns:
        entries mapping ``{"image": path}`` to ``{"image": float32 (C, *image_size)}``; settings included.

    Raises:
        FedKPerError: the config uses a transform of this package that has no MONAI equivalent here.
    """
    from fedkper_monai.data import resolve_transforms_config

    path = resolve_transforms_config(transforms)
    config = json.loads(path.read_text())
    out: dict[str, Any] = {
        key: value for key, value in config.items() if key not in ("transforms", "preprocessing") and not key.startswith("_")
    }
    out["augment"] = False
    if image_size is not None:
        out["image_size"] = [int(side) for side in image_size]
    steps = []
    for entry in config.get("transforms", []):
        if _is_label_only(entry) or _is_augmentation(entry):
            continue
        target = str(entry.get("_target_", ""))
        if target.startswith(_PACKAGES):
            name = target.rsplit(".", 1)[-1]
            if name not in _REPLACEMENTS:
                raise FedKPerError(f"{path}: transform {target} has no MONAI equivalent for a bundle")
            steps.append(dict(_REPLACEMENTS[name]))
        elif target.startswith("fedkper_monai."):
            raise FedKPerError(f"{path}: transform {target} has no MONAI equivalent for a bundle")
        else:
            steps.append(entry)
    out["transforms"] = steps
    out["preprocessing"] = {"_target_": "Compose", "transforms": "@transforms"}
    return out
