"""FLARE's component allow-list: let a site (or a simulator workspace) build exactly our jobs' components.

NVFlare 2.9 refuses any job component whose class path is not in the site's ``class_allow_list``
(``local/resources.json``; an entry matches a class path exactly, or as a prefix when it ends with ``"."``).
Our jobs carry no custom code (no BYOC). A package prefix such as ``fedkper_monai.`` would let a job
instantiate any function of the package as a component (``allow_package(prefix="os.")`` rewrote a site's
allow-list that way, issue 11), so this module adds the exact class paths our job configs name, as
:func:`fedkper_monai.flare.jobspec.component_classes` lists them, keeps FLARE's default list, never writes
``"*"`` and removes a package prefix that an older version of this command added.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedkper_monai.errors import DataError
from fedkper_monai.io import atomic_write_json

__all__ = ["allowed_classes", "allow_components", "check_site_folder"]

_ALLOW_LIST_KEY = "class_allow_list"
_ALLOW_ALL = "*"
# Written by earlier versions of `fedkper-monai allow`: far wider than the classes our jobs use.
_LEGACY_PREFIXES = ("fedkper_monai.", "fedkper_monai")


def allowed_classes() -> list[str]:
    """The class paths a site must allow beyond FLARE's default list: every component our jobs name."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    from fedkper_monai.flare.jobspec import component_classes

    return [path for path in component_classes() if path not in DEFAULT_CLASS_ALLOW_LIST]


def check_site_folder(site_dir: str | Path) -> Path:
    """``site_dir`` as a path when it is an existing FLARE site startup kit or workspace; DataError otherwise.

    A provisioned site (or POC participant) folder and a simulator workspace that has run once hold
    ``startup/`` or ``local/``; anything else is a typo or the wrong folder, and is not created.
    """
    folder = Path(site_dir)
    if folder.is_file():
        raise DataError(folder, "is a file; pass a FLARE site startup-kit folder or simulator workspace", field="site_dir")
    if not folder.is_dir():
        raise DataError(folder, "no such folder; pass an existing FLARE site startup-kit folder or simulator workspace",
                        field="site_dir")
    if not ((folder / "startup").is_dir() or (folder / "local").is_dir()):
        raise DataError(folder, "is not a FLARE site or workspace: it holds neither startup/ nor local/", field="site_dir")
    return folder


def _read_resources(local_dir: Path) -> tuple[dict, Path]:
    """The site's resources (from ``resources.json``, else its ``.default``) and the file they came from."""
    target = local_dir / "resources.json"
    source = target if target.exists() else local_dir / "resources.json.default"
    if not source.exists():
        return {"format_version": 2}, source
    try:
        resources = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(source, f"not valid JSON ({error})") from None
    if not isinstance(resources, dict):
        raise DataError(source, "must hold a JSON object")
    return resources, source


def allow_components(site_dir: str | Path, *, create: bool = False) -> Path:
    """Add our jobs' exact component classes to the allow-list of a FLARE site or simulator workspace.

    ``site_dir/local/resources.json`` is created from ``local/resources.json.default`` when absent. When the
    file has no ``class_allow_list`` yet, FLARE's built-in default list is written first, so nothing FLARE
    allows by default is lost. Idempotent.

    Args:
        site_dir: a provisioned site's startup-kit folder or a simulator workspace (``-w``).
        create: allow a folder that does not exist yet or is empty (``simulate`` prepares a fresh
            workspace); without it ``site_dir`` must pass :func:`check_site_folder`.

    Returns:
        the path of the written ``resources.json``.

    Raises:
        DataError: ``site_dir`` is not a site folder (without ``create``), the resources file is not a JSON
            object, or its allow-list is not a list or contains ``"*"``.
    """
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    folder = Path(site_dir)
    if not create or folder.is_file():
        check_site_folder(folder)
    resources, source = _read_resources(folder / "local")
    allow_list = resources.get(_ALLOW_LIST_KEY)
    if allow_list is None:
        allow_list = list(DEFAULT_CLASS_ALLOW_LIST)
    if not isinstance(allow_list, list):
        raise DataError(source, "must be a list of class paths", field=_ALLOW_LIST_KEY)
    if _ALLOW_ALL in allow_list:
        # We never widen a site that disabled the check; the site owner must fix it.
        raise DataError(source, "contains '*', which disables FLARE's component check; remove it", field=_ALLOW_LIST_KEY)
    allow_list = [entry for entry in allow_list if entry not in _LEGACY_PREFIXES]
    allow_list += [path for path in allowed_classes() if path not in allow_list]
    resources[_ALLOW_LIST_KEY] = allow_list
    return atomic_write_json(folder / "local" / "resources.json", resources, indent=4)
