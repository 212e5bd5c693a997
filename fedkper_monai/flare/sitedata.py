"""Where a FLARE participant finds its data: site-local settings, never paths baked into a job."""

from __future__ import annotations

import os
from pathlib import Path

from fedkper_monai.errors import FedKPerError

__all__ = [
    "DATA_ROOT_ENV",
    "DATALIST_ENV",
    "DEMO_ROOT_ENV",
    "default_demo_root",
    "resolve_data_root",
    "site_datalist_path",
    "site_datalists",
]

DATA_ROOT_ENV = "FEDKPER_DATA_ROOT"
DATALIST_ENV = "FEDKPER_DATALIST"
DEMO_ROOT_ENV = "FEDKPER_DEMO_ROOT"


def default_demo_root() -> Path:
    """Folder of the built-in demo data: ``$FEDKPER_DEMO_ROOT`` or ``~/.cache/fedkper_monai/demo``."""
    configured = os.environ.get(DEMO_ROOT_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "fedkper_monai" / "demo"


def resolve_data_root(data_root: str | None, *, demo: bool = False) -> Path:
    """The data root of this participant.

    Order: the job argument ``data_root``; else ``$FEDKPER_DATA_ROOT`` (set per site by its operator);
    else, for the demo job only, the built-in demo data (generated on first use, shared by all sites).

    Raises:
        FedKPerError: no data root is configured and the job is not the demo.
    """
    if data_root:
        return Path(os.path.expanduser(os.path.expandvars(data_root)))
    configured = os.environ.get(DATA_ROOT_ENV)
    if configured:
        return Path(configured)
    if demo:
        from fedkper_monai.data.demo import ensure_demo_data

        return ensure_demo_data(default_demo_root())
    raise FedKPerError(
        f"no data root: set the job argument data_root or the environment variable {DATA_ROOT_ENV} "
        "to the folder that holds <site-name>.json (made by `fedkper-monai prepare`)"
    )


def site_datalist_path(site_name: str, data_root: str | None, *, demo: bool = False) -> Path:
    """This site's datalist: ``$FEDKPER_DATALIST`` when set (a real site naming its own file), else
    ``<data root>/<site-name>.json`` (the layout ``fedkper-monai prepare`` writes for site-1 ... site-N)."""
    configured = os.environ.get(DATALIST_ENV)
    if configured and not data_root:
        return Path(configured)
    return resolve_data_root(data_root, demo=demo) / f"{site_name}.json"


def site_datalists(data_root: str | Path) -> list[Path]:
    """``site-1.json .. site-N.json`` of a prepared data root, in site order.

    Raises:
        FedKPerError: none found, or the numbering has a gap (site-k is what FLARE names the k-th site).
    """
    root = Path(data_root)
    found = {path.stem: path for path in root.glob("site-*.json") if path.stem[5:].isdigit()}
    if not found:
        raise FedKPerError(f"{root}: no site-*.json; --data-root must hold the output of `fedkper-monai prepare`")
    expected = [f"site-{k}" for k in range(1, len(found) + 1)]
    missing = [name for name in expected if name not in found]
    if missing:
        raise FedKPerError(f"{root}: site datalists are not numbered 1..{len(found)} (missing {', '.join(missing)})")
    return [found[name] for name in expected]
