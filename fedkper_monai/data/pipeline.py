"""From datalist entries to MONAI batches: transform configs, datasets with caching, seeded loaders."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

# MONAI reports on every import and every DICOM reader that the optional GPU decoder (nvImageCodec) is
# absent and that it falls back to pydicom's decoders, which is exactly what we use: noise for CPU users.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin", category=UserWarning)

from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose, Randomizable, RandomizableTransform

from fedkper_monai.errors import DataError
from fedkper_monai.job_fields import check_transform_settings
from fedkper_monai.transform_configs import TRANSFORMS_DIR_ENV, resolve_transforms_config

__all__ = [
    "TRANSFORMS_DIR_ENV",
    "build_transforms",
    "check_plain_settings",
    "is_deterministic",
    "make_dataset",
    "make_loader",
    "resolve_transforms_config",
]


def check_plain_settings(settings: Mapping[str, Any], config: str | os.PathLike = "classification_2d") -> None:
    """Refuse settings a job may not set in the transform config ``config``.

    Allowed: exactly the plain top-level settings the config itself declares (for ``classification_2d``:
    ``image_size``, ``channels``, ``intensity_range``, ``augment``, ``spatial_dims``), each set to a plain
    value (null, booleans, numbers, strings without ``$``, ``%``, ``@``, ``#`` or ``_target_``, lists of
    those). A MONAI config path such as ``"transforms#1#_target_"`` is not a setting: set on the parser it
    would rewrite an entry of the pipeline.

    Raises:
        DataError: naming the setting (the key) and listing the valid ones.
    """
    check_transform_settings(settings, config, source="transform settings", field="")


def build_transforms(
    config: str | os.PathLike = "classification_2d",
    *,
    image_size: Sequence[int] | None = None,
    augment: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> Compose:
    """Build the MONAI pipeline of a bundle-syntax transform config.

    Top-level settings (``image_size``, ``augment``, ``channels``, ``intensity_range``, ...) are set before
    parsing, so references such as ``@image_size`` see them.

    Args:
        config: a config name (see :func:`resolve_transforms_config`); a path only inside the trusted folders.
        image_size: the task's spatial size (for example a datalist's ``image_size``); None keeps the config's.
        augment: switch on the config's random augmentation (training only).
        overrides: more top-level settings, for example ``{"channels": 3, "intensity_range": [0, 255]}``: only
            those the config declares, with plain values (:func:`check_plain_settings`).

    Returns:
        a ``monai.transforms.Compose`` mapping ``{"image": path, "label": int, "id": str}`` to
        ``{"image": float32 (C, *image_size), "label": int64 scalar, "id": str}``.

    Example:
        >>> pipeline = build_transforms("classification_2d", image_size=[28, 28])
    """
    from monai.bundle import ConfigParser

    path = resolve_transforms_config(config)
    parser = ConfigParser()
    try:
        parser.read_config(str(path))
    except Exception as error:  # malformed JSON: name the file
        raise DataError(path, f"cannot read transform config: {error}") from None
    # The job's (and the datalist's) settings: only what this config declares. image_size and augment are
    # this function's own arguments, set the same way.
    check_plain_settings(overrides or {}, config)
    settings: dict[str, Any] = {"augment": bool(augment)}
    if image_size is not None:
        settings["image_size"] = [int(s) for s in image_size]
    settings.update(overrides or {})
    for key, value in settings.items():
        parser[key] = value
    try:
        pipeline = parser.get_parsed_content("preprocessing", instantiate=True)
    except KeyError as error:
        raise DataError(path, f"missing entry {error}", field="preprocessing") from None
    if not isinstance(pipeline, Compose):
        raise DataError(path, f"must build a monai.transforms.Compose, got {type(pipeline).__name__}", field="preprocessing")
    return pipeline


def _flatten(transform: Callable) -> list[Callable]:
    """All leaf transforms of a (nested) Compose."""
    children = getattr(transform, "transforms", None)
    if isinstance(transform, Compose) or (isinstance(children, (list, tuple)) and children):
        out: list[Callable] = []
        for child in children or ():
            out.extend(_flatten(child))
        return out
    return [transform]


def is_deterministic(transform: Callable) -> bool:
    """False when any transform in the pipeline is random and active (a ``Randomizable`` with ``prob > 0``)."""
    for leaf in _flatten(transform):
        if isinstance(leaf, Randomizable):
            probability = getattr(leaf, "prob", 1.0) if isinstance(leaf, RandomizableTransform) else 1.0
            if probability > 0:
                return False
    return True


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _load_error(entry: Any, error: BaseException) -> DataError:
    """A DataError naming the image and the sample id that failed to load or transform."""
    image = entry.get("image", "<no image>") if isinstance(entry, Mapping) else str(entry)
    sample_id = entry.get("id") if isinstance(entry, Mapping) else None
    cause = _root_cause(error)
    return DataError(
        str(image), f"cannot load or transform image: {type(cause).__name__}: {cause}", field=f"id={sample_id}"
    )


class _NamedErrorDataset(Dataset):
    """monai ``Dataset`` whose failures name the image file and sample id."""

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as error:
            raise _load_error(self.data[index], error) from error


class _NamedErrorCacheDataset(CacheDataset):
    """monai ``CacheDataset`` whose failures (while caching or after) name the image file and sample id."""

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as error:
            raise _load_error(self.data[idx], error) from error

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except DataError:
            raise
        except Exception as error:
            raise _load_error(self.data[index], error) from error


class _NamedErrorPersistentDataset(PersistentDataset):
    """monai ``PersistentDataset`` whose failures name the image file and sample id."""

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as error:
            raise _load_error(self.data[index], error) from error


def make_dataset(
    entries: Sequence[Mapping[str, Any]],
    transform: Callable,
    *,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> torch.utils.data.Dataset:
    """A MONAI dataset over datalist entries.

    Args:
        entries: ``{"image", "label", "id"}`` dicts (a :class:`Datalist` list).
        transform: the pipeline from :func:`build_transforms`.
        cache: ``"none"`` (``monai.data.Dataset``: decode every epoch), ``"memory"`` (``CacheDataset``: the
            deterministic prefix is computed once, random transforms run after the cache on every access) or
            ``"disk"`` (``PersistentDataset`` under ``cache_dir``: survives restarts).
        cache_dir: folder for ``"disk"``.
        num_workers: threads used to fill the memory cache.

    Raises:
        DataError: when an image cannot be loaded (naming the file and the sample id).
    """
    data = [dict(entry) for entry in entries]
    if cache == "none":
        return _NamedErrorDataset(data, transform=transform)
    if cache == "memory":
        # A fully deterministic pipeline never alters the cached item, so no defensive copy is needed.
        return _NamedErrorCacheDataset(
            data,
            transform=transform,
            cache_rate=1.0,
            num_workers=num_workers or 0,
            progress=False,
            copy_cache=not is_deterministic(transform),
        )
    if cache == "disk":
        if cache_dir is None:
            raise ValueError('cache="disk" needs cache_dir')
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return _NamedErrorPersistentDataset(data, transform=transform, cache_dir=cache_dir)
    raise ValueError(f'cache must be "none", "memory" or "disk", got {cache!r}')


def make_loader(
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A ``monai.data.DataLoader`` whose shuffling (and random transforms) follow ``seed``.

    A batch is ``{"image": float (B, C, *spatial), "label": int64 (B,), "id": list[str]}``. With the same
    seed, the sequence of epochs is the same in every run.
    """
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
    )
