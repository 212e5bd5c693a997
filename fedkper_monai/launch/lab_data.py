"""Each lab participant's own data folder: only its datalists and the files they name, copied out of a prepared
federation (as a hospital holds only its own images).

``site-k`` gets ``site-k.json``; the server gets the evaluation lists (``global_test.json``,
``global_val.json``, ``holdout-*.json``). Each folder is ``0700``: on one host every participant runs as root,
so the mode documents intent but does not stop root; what separates the sites is that each one's
``site-config`` names only its own folder, which holds nothing of another site.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fedkper_monai.errors import DataError

__all__ = ["copy_datalists", "SERVER_LISTS"]

SERVER_LISTS = ("global_test.json", "global_val.json", "holdout-*.json")


def _referenced_files(datalist: Path, root: Path) -> list[str]:
    """Relative paths of the files a datalist's entries name (every string field that is a file under ``root``)."""
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError) as error:
        raise DataError(datalist, f"not a readable JSON datalist ({error})") from None
    found: list[str] = []
    for key, entries in content.items():
        if not isinstance(entries, list):
            continue
        for index, entry in enumerate(entries):
            for name, value in (entry.items() if isinstance(entry, dict) else ()):
                if not isinstance(value, str) or "/" not in value and not (root / value).is_file():
                    continue
                if Path(value).is_absolute() or ".." in Path(value).parts:
                    raise DataError(datalist, "the lab copies a site's files inside its data root; use relative paths",
                                    field=f"{key}[{index}].{name}")
                if (root / value).is_file():
                    found.append(value)
    return found


def copy_datalists(root: Path, names: list[str], target: Path) -> Path:
    """Copy the datalists ``names`` (glob patterns) of ``root`` and the files they name into ``target`` (0700)."""
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o700)
    for pattern in names:
        for datalist in sorted(root.glob(pattern)):
            for relative in _referenced_files(datalist, root):
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / relative, destination)
            shutil.copyfile(datalist, target / datalist.name)
    return target
