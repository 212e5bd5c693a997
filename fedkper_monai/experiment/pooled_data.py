"""The data side of ``fedkper-monai compare``: a prepared partition's site datalists, its fingerprint, and the
pooled one-site federation of the centralized upper bound."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedkper_monai.errors import DataError
from fedkper_monai.flare.sitedata import site_datalists
from fedkper_monai.io import atomic_directory

__all__ = ["pool_sites", "data_fingerprint", "held_out_fingerprint"]


def pool_sites(data_root: str | Path, out: str | Path) -> Path:
    """Write the centralized federation: one site holding every site's training and local test entries.

    ``out/site-1.json`` gets the union of the sites' ``training`` lists and of their local ``test`` lists;
    ``global_test.json``, ``global_val.json`` and the held-out sites' ``holdout-*.json`` are copied, so the
    bound is scored on the same unseen sites as the federations (images stay where they are: paths outside
    ``out`` are written absolute). Built in a temporary folder and moved into place.

    Returns:
        ``out``.

    Raises:
        DataError: the sites disagree on the task (classes, dimensions, size) or share a sample id.
    """
    from fedkper_monai.data import load_datalist, write_datalist

    root = Path(data_root)
    sites = [load_datalist(path) for path in site_datalists(root)]
    first = sites[0]
    training: list[dict] = []
    test: list[dict] = []
    owner: dict[str, Path] = {}
    for site in sites:
        task = (site.num_classes, site.class_names, site.spatial_dims, site.image_size)
        if task != (first.num_classes, first.class_names, first.spatial_dims, first.image_size):
            raise DataError(site.path, f"task differs from {first.path.name} (num_classes, class_names, "
                                       "spatial_dims or image_size): cannot pool the sites")
        for key, pooled in (("training", training), ("test", test)):
            for index, entry in enumerate(site.entries(key)):
                if entry["id"] in owner:
                    raise DataError(site.path, f"id {entry['id']!r} is also in {owner[entry['id']].name}: "
                                               "cannot pool the sites", field=f"{key}[{index}].id")
                owner[entry["id"]] = site.path
                pooled.append(entry)
    with atomic_directory(out, overwrite=True) as staging:
        write_datalist(
            staging / "site-1.json", num_classes=first.num_classes, class_names=first.class_names,
            training=training, test=test, spatial_dims=first.spatial_dims, image_size=first.image_size,
            extra={"_comment_": f"centralized: site-1..site-{len(sites)} of {root.resolve()} pooled"},
        )
        for path in [root / "global_test.json", root / "global_val.json", *sorted(root.glob("holdout-*.json"))]:
            if path.exists():
                write_datalist(staging / path.name, load_datalist(path))
    return Path(out)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_fingerprint(data_root: Path) -> dict[str, str]:
    """sha256 of every datalist of the partition: equal fingerprints mean the same partition."""
    files = site_datalists(data_root) + [data_root / n for n in ("global_test.json", "global_val.json")]
    return {path.name: _sha256(path) for path in files if path.exists()}


def held_out_fingerprint(data_root: Path) -> dict[str, str]:
    """sha256 of each held-out site's datalist (``holdout-*.json``; empty without held-out sites)."""
    return {path.name: _sha256(path) for path in sorted(Path(data_root).glob("holdout-*.json"))}
