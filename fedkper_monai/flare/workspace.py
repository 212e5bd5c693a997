"""FLARE's component allow-list: let a site (or a simulator workspace) build ``fedkper_monai.`` components.

NVFlare 2.9 refuses any job component whose class path is not in the site's ``class_allow_list``
(``local/resources.json``). Our jobs carry no custom code (no BYOC), so every site must allow our
package by prefix. This module adds exactly that prefix to the list, keeping FLARE's default list and
never disabling the check with ``"*"``.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedkper_monai.errors import DataError
from fedkper_monai.io import atomic_write_json

__all__ = ["PACKAGE_PREFIX", "allow_package"]

PACKAGE_PREFIX = "fedkper_monai."
_ALLOW_LIST_KEY = "class_allow_list"
_ALLOW_ALL = "*"


def allow_package(site_dir: str | Path, prefix: str = PACKAGE_PREFIX) -> Path:
    """Add ``prefix`` to the component allow-list of a FLARE site or simulator workspace.

    ``site_dir`` is a provisioned site's startup-kit folder or a simulator workspace (``-w``); its
    ``local/resources.json`` is created from ``local/resources.json.default`` when absent. When the
    file has no ``class_allow_list`` yet, FLARE's built-in default list is written first, so nothing
    FLARE allows by default is lost. Idempotent.

    Args:
        site_dir: the folder that holds (or will hold) ``local/``.
        prefix: the package prefix to allow; must end with ``"."``.

    Returns:
        the path of the written ``resources.json``.

    Raises:
        DataError: the resources file is not a JSON object, or its allow-list contains ``"*"``.
    """
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    if not prefix.endswith("."):
        raise ValueError(f"prefix must end with '.', got {prefix!r}")
    local_dir = Path(site_dir) / "local"
    target = local_dir / "resources.json"
    source = target if target.exists() else local_dir / "resources.json.default"
    resources: dict = {"format_version": 2}
    if source.exists():
        try:
            resources = json.loads(source.read_text())
        except json.JSONDecodeError as error:
            raise DataError(source, f"not valid JSON ({error})") from error
        if not isinstance(resources, dict):
            raise DataError(source, "must hold a JSON object")
    allow_list = resources.get(_ALLOW_LIST_KEY)
    if allow_list is None:
        allow_list = list(DEFAULT_CLASS_ALLOW_LIST)
    if not isinstance(allow_list, list):
        raise DataError(source, "must be a list of class-path prefixes", field=_ALLOW_LIST_KEY)
    if _ALLOW_ALL in allow_list:
        # We never widen a site that disabled the check; the site owner must fix it.
        raise DataError(source, "contains '*', which disables FLARE's component check; remove it", field=_ALLOW_LIST_KEY)
    if prefix not in allow_list:
        allow_list.append(prefix)
    resources[_ALLOW_LIST_KEY] = allow_list
    return atomic_write_json(target, resources, indent=4)
