"""Where a transform config named by a job is found, and which settings it lets a job set (stdlib only).

A job names a config (``classification_2d``); MONAI's ``ConfigParser`` evaluates that config's ``$``
expressions, so the config comes only from folders the installation or the site operator controls. What a
job may then set in it are the plain settings the config itself declares at its top level (``image_size``,
``channels``, ...): :func:`declared_settings` reads them from the JSON without parsing it as MONAI config.
Kept free of torch and MONAI so the checks before FLARE starts (:mod:`fedkper_monai.job_fields`) take
milliseconds; :mod:`fedkper_monai.data.pipeline` builds the pipelines.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from fedkper_monai.errors import DataError

__all__ = ["TRANSFORMS_DIR_ENV", "PIPELINE_KEYS", "CODE_MARKERS", "is_plain", "declared_settings", "resolve_transforms_config"]

#: Environment variable naming a folder of transform configs, searched first.
TRANSFORMS_DIR_ENV = "FEDKPER_TRANSFORMS_DIR"
#: The entries holding the pipeline itself: never settings, whatever their value.
PIPELINE_KEYS = ("transforms", "preprocessing")

# A config name: letters, digits, "_", "-", "." (no path separators, no "..").
_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: What makes a string code in a MONAI config rather than a value: a ``$`` expression, an ``@`` reference,
#: a ``%`` macro (another file), a ``#`` path into another entry, a ``_target_`` instantiation.
CODE_MARKERS = ("$", "%", "@", "#", "_target_")


def _config_dirs() -> list[Path]:
    """Where a config name is looked up, in order."""
    dirs = []
    if os.environ.get(TRANSFORMS_DIR_ENV):
        dirs.append(Path(os.environ[TRANSFORMS_DIR_ENV]).expanduser())
    dirs.append(Path(__file__).resolve().parents[1] / "transforms")  # repo checkout / editable install
    dirs.append(Path(sys.prefix) / "share" / "fedkper_monai" / "transforms")  # setup.cfg data_files
    return dirs


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
    run the job's code at the site. ``"bundle"`` is this participant's own MONAI bundle
    (``$FEDKPER_BUNDLE_ROOT``).

    Raises:
        DataError: a path outside the trusted folders, a name with path separators, or not found (the
            message lists every place searched).
    """
    text = str(name_or_path)
    if text == "bundle":
        from fedkper_monai.site_bundle import local_bundle_config

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


def is_plain(value: object) -> bool:
    """Null, a boolean, a number, a string with no MONAI code marker, or a list of these."""
    if isinstance(value, (list, tuple)):
        return all(is_plain(item) for item in value)
    if isinstance(value, str):
        return not any(marker in value for marker in CODE_MARKERS)
    return value is None or isinstance(value, (bool, int, float))


def declared_settings(config: str | os.PathLike) -> tuple[str, ...]:
    """The settings a job may set in a transform config: the config's own top-level plain entries.

    ``config`` is a name (or trusted path) as :func:`resolve_transforms_config` takes it. Left out: the
    pipeline entries (``transforms``, ``preprocessing``), MONAI's reserved ``_..._`` keys (``_comment_``,
    ``_requires_``, ...) and every entry whose value is code (a ``$`` expression, an ``@`` reference, a dict
    to instantiate). The file is read as JSON only: nothing in it is evaluated.

    Example:
        >>> declared_settings("classification_2d")
        ('image_size', 'channels', 'intensity_range', 'augment', 'spatial_dims')

    Raises:
        DataError: the config is not found or is not a JSON object.
    """
    path = resolve_transforms_config(config)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(path, f"cannot read transform config: {error}") from None
    if not isinstance(entries, dict):
        raise DataError(path, "a transform config must be a JSON object")
    return tuple(
        key for key, value in entries.items()
        if key not in PIPELINE_KEYS and not key.startswith("_") and is_plain(key) and is_plain(value)
    )
