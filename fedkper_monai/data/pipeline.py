"""From datalist entries to MONAI batches: transform configs, datasets with caching, seeded loaders."""

from __future__ import annotations

import logging
import os
import re
import sys
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

__all__ = [
    "TRANSFORMS_DIR_ENV",
    "build_transforms",
    "check_plain_settings",
    "is_deterministic",
    "make_dataset",
    "make_loader",
    "resolve_transforms_config",
]

#: Environment variable naming a folder of transform configs, searched first.
TRANSFORMS_DIR_ENV = "FEDKPER_TRANSFORMS_DIR"


def _config_dirs() -> list[Path]:
    """Where a config name is looked up, in order."""
    dirs = []
    if os.environ.get(TRANSFORMS_DIR_ENV):
        dirs.append(Path(os.environ[TRANSFORMS_DIR_ENV]).expanduser())
    dirs.append(Path(__file__).resolve().parents[2] / "transforms")  # repo checkout / editable install
    dirs.append(Path(sys.prefix) / "share" / "fedkper_monai" / "transforms")  # setup.cfg data_files
    return dirs


# A config name: letters, digits, "_", "-", "." (no path separators, no "..").
_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# MONAI's ConfigParser evaluates "$" expressions, "%" macros (other files) and "_target_" instantiations.
_CODE_MARKERS = ("$", "%", "@")
_PIPELINE_KEYS = ("transforms", "preprocessing")


def _trusted(path: Path) -> bool:
    """Whether ``path`` lies in a folder the installation or the site operator controls."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(folder.resolve()) for folder in _config_dirs())


def resolve_transforms_config(name_or_path: str | os.PathLike) -> Path:
    """Find a transform config by name, such as ``"classification_2d"``, in the trusted folders only.

    A name is looked up as ``<name>.json`` in ``$FEDKPER_TRANSFORMS_DIR`` (a site-local folder the site
    operator sets), then in the repository's ``transforms/`` beside the package, then in
    ``<sys.prefix>/share/fedkper_monai/transforms``. A path is accepted only when it lies in one of these
    folders: MONAI evaluates a config's ``$`` expressions, so a file a job ships (or any other file) would
    run the job's code at the site.

    Raises:
        DataError: a path outside the trusted folders, a name with path separators, or not found (the
            message lists every place searched).
    """
    text = str(name_or_path)
    if text == "bundle":  # the preprocessing of this site's own MONAI bundle ($FEDKPER_BUNDLE_ROOT)
        from fedkper_monai.bundle.importing import local_bundle_config

        return local_bundle_config()
    candidate = Path(text).expanduser()
    if not _CONFIG_NAME.fullmatch(text) or ".." in text:
        if candidate.is_file() and _trusted(candidate):
            return candidate.absolute()
        raise DataError(
            text,
            "refused: a job names a transform config (for example classification_2d), not a file; a config "
            f"from elsewhere would run its '$' expressions at this site. A site's own configs go in ${TRANSFORMS_DIR_ENV}",
            field="transforms",
        )
    filename = text if text.endswith(".json") else f"{text}.json"
    looked = []
    for folder in _config_dirs():
        path = folder / filename
        looked.append(str(path))
        if path.is_file():
            return path
    raise DataError(text, "transform config not found; looked at: " + ", ".join(looked), field="transforms")


def check_plain_settings(settings: Mapping[str, Any]) -> None:
    """Refuse settings that are not plain values (what a job may set in a transform config).

    Plain: null, booleans, numbers, strings without ``$``, ``%`` or ``@``, and lists of those; the keys
    are top-level settings (not ``transforms``/``preprocessing``, not ``_target_`` or another ``_key_``).

    Raises:
        DataError: naming the setting.
    """
    for key, value in settings.items():
        if not isinstance(key, str) or key.startswith("_") or key in _PIPELINE_KEYS:
            raise DataError("transform settings", f"a job may not set {key!r} (plain settings only)", field=str(key))
        _check_plain_value(str(key), value)


def _check_plain_value(key: str, value: Any) -> None:
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain_value(key, item)
    elif isinstance(value, str):
        if any(marker in value for marker in _CODE_MARKERS) or "_target_" in value:
            raise DataError("transform settings", f"{value!r} is refused: '$', '%', '@' and '_target_' are code in "
                                                  "a MONAI config; a job sets plain values only", field=key)
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise DataError("transform settings", f"{type(value).__name__} values are refused; a job sets plain values "
                                              "(numbers, booleans, strings, lists of them)", field=key)


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
        overrides: more top-level settings, for example ``{"channels": 3, "intensity_range": [0, 255]}``.

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
    settings: dict[str, Any] = {"augment": bool(augment)}
    if image_size is not None:
        settings["image_size"] = [int(s) for s in image_size]
    settings.update(overrides or {})
    check_plain_settings(settings)
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
