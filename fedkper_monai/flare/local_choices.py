"""A site's own choices, kept in its FLARE workspace (``<site>/local/fedkper_site.json``), never in a job.

The site operator writes them once with ``fedkper-monai site-config``; the site executor reads them when
a job starts. A job cannot point a site at other data or another device: these choices win over the job's.
The site's privacy choices (``score_epsilon``, ``share_decimals``, ``send_diff``) live here too, beside FLARE's
own ``local/privacy.json`` (:mod:`fedkper_monai.flare.local_privacy`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedkper_monai.errors import DataError
from fedkper_monai.io import atomic_write_json

if TYPE_CHECKING:
    from fedkper_monai.flare.local_privacy import SitePrivacy

__all__ = ["SITE_CONFIG_FILE", "DEVICES", "read_site_config", "write_site_config"]

SITE_CONFIG_FILE = "fedkper_site.json"
DEVICES = ("auto", "cpu", "cuda")
_PATH_KEYS = ("data_root", "datalist", "device")
_KEYS = (*_PATH_KEYS, "score_epsilon", "share_decimals", "send_diff")


def read_site_config(local_dir: str | Path) -> dict[str, Any]:
    """The choices in ``local_dir/fedkper_site.json`` (``{}`` when the site wrote none).

    Raises:
        DataError: the file is not a JSON object of known keys with string (or null) values (the privacy
            keys: see :func:`~fedkper_monai.flare.local_privacy.check_privacy_values`).
    """
    path = Path(local_dir) / SITE_CONFIG_FILE
    if not path.exists():
        return {}
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, f"not a readable JSON file ({error})") from None
    if not isinstance(values, dict):
        raise DataError(path, "must hold a JSON object")
    from fedkper_monai.flare.local_privacy import check_privacy_values

    for key, value in values.items():
        if key not in _KEYS:
            raise DataError(path, f"unknown key; valid keys: {', '.join(_KEYS)}", field=key)
        if key in _PATH_KEYS and value is not None and not isinstance(value, str):
            raise DataError(path, "must be a string or null", field=key)
    check_privacy_values(values, path)
    if values.get("device") not in (None, *DEVICES):
        raise DataError(path, f"must be one of {', '.join(DEVICES)}", field="device")
    return values


def write_site_config(site_dir: str | Path, data_root: str | Path, *, datalist: str | Path | None = None,
                      device: str | None = None, privacy: SitePrivacy | None = None) -> Path:
    """Write a site's choices into ``site_dir/local/`` (atomically); returns the file written.

    Args:
        site_dir: the site's FLARE startup-kit folder or POC participant folder (holds ``startup/`` or ``local/``).
        data_root: folder of the site's images and datalists; relative paths in the datalist resolve as
            :func:`fedkper_monai.data.load_datalist` resolves them.
        datalist: the site's datalist JSON (a relative path is relative to the current folder); default
            ``<data_root>/<site-name>.json``, found at run time from the site's FLARE name.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``; default the job's choice.
        privacy: what the site protects of what it sends; its filters go into FLARE's ``local/privacy.json``
            (written, or removed when none; :func:`~fedkper_monai.flare.local_privacy.write_privacy_policy`).

    Raises:
        DataError: ``site_dir`` is not a site folder, or ``data_root``, ``datalist``, ``device`` or a privacy
            option is wrong.
    """
    from fedkper_monai.flare.local_privacy import SitePrivacy, write_privacy_policy
    from fedkper_monai.flare.workspace import check_site_folder

    folder = check_site_folder(site_dir)
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(root, "no such folder", field="data_root")
    values: dict[str, Any] = {"data_root": str(root), "datalist": None, "device": device}
    if datalist is not None:
        path = Path(datalist).expanduser().resolve()
        if not path.is_file():
            raise DataError(path, "no such datalist file", field="datalist")
        values["datalist"] = str(path)
    if device is not None and device not in DEVICES:
        raise DataError(folder, f"unknown device {device!r}; one of {', '.join(DEVICES)}", field="device")
    privacy = privacy or SitePrivacy()
    privacy.check(folder / "local" / SITE_CONFIG_FILE)
    values.update(privacy.site_values())
    (folder / "local").mkdir(exist_ok=True)
    write_privacy_policy(folder / "local", privacy)
    return atomic_write_json(folder / "local" / SITE_CONFIG_FILE, values)
