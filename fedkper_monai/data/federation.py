"""The federation writer: rows from any source -> per-site datalists, global lists and summaries.

Every importer (``sources/npz.py``, ``sources/folders.py``, ``sources/manifest.py``, ``sources/segmentation.py``)
and the demo data hand
a :class:`Catalog` (one :class:`Row` per sample, plus what the datalists need to say about the images) and
one :class:`~fedkper_monai.data.import_settings.ImportSettings` to this module, which carves the global splits, partitions the training pool over
the sites and writes one output folder, built whole in a staging folder and moved into place at the end
(``fedkper_monai.io.atomic_directory``), so an error leaves nothing in ``out``. Output contract::

    DIR/site-1.json ... DIR/site-N.json   training + local test ("test") of each site (FLARE's site names);
                                           a manifest's sites are named by its site column (hospital-a.json)
                                           or --site-names (hospital-a=site-1)
    DIR/holdout-1.json ...                 --holdout-sites: sites that never train, all samples under "test"
    DIR/global_test.json                   the global test set, under "test"
    DIR/global_val.json                    the global validation set, under "validation" and again under "test"
                                           (so it can be evaluated exactly like a test list)
    DIR/summary.json, DIR/summary.txt      per-site counts (:mod:`fedkper_monai.data.summary`)
    DIR/images/<split>/<id>.png|.nii.gz    images written by the importer, shared by all datalists

Every datalist carries num_classes, class_names, spatial_dims and image_size (a segmentation catalog's also
``"task": "segmentation"``). Ids are unique across all files of one output (``train-000123``, ``test-000045``, ...).

Errors name the Python parameter that is wrong in ``DataError.field`` (``num_sites``, ``out``, ...); the
``prepare`` command turns it into the flag (``--sites``, ``--out``, ...).
"""

from __future__ import annotations

import glob
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fedkper_monai.data import partition as partitioners
from fedkper_monai.data.datalist import write_datalist
from fedkper_monai.data.import_settings import ImportSettings, check_site_name
from fedkper_monai.data.summary import format_summary, split_counts
from fedkper_monai.errors import DataError
from fedkper_monai.io import atomic_directory, atomic_write_json, atomic_write_text

__all__ = [
    "PARTITIONS",
    "SPLITS",
    "Catalog",
    "FederationPlan",
    "Row",
    "import_catalog",
    "open_output",
    "plan_federation",
    "site_name",
    "write_federation",
]

PARTITIONS = ("dirichlet", "iid")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Row:
    """One sample of a source.

    Attributes:
        id: unique id across the whole output (becomes the datalist ``id``).
        label: class index (segmentation: the case's dominant foreground class, the partition's stratum).
        image: the image file as the source found it ("" when the source writes the image itself).
        split: ``"train"``, ``"val"`` or ``"test"`` when the source says; None to carve the global splits.
        site: the natural site (a manifest's ``site`` column); None for a Dirichlet/IID partition.
    """

    id: str
    label: int
    image: str = ""
    split: str | None = None
    site: str | None = None


@dataclass(frozen=True)
class Catalog:
    """What a source hands the writer: its rows and the facts every datalist states about the images.

    Attributes:
        rows: every sample, in the source's order (ids unique).
        class_names: names of the classes in label order.
        spatial_dims: 2 or 3.
        image_size: task size written into the datalists.
        source: where the data came from (for the summary and errors).
        info: facts for ``summary.json`` in the order they appear there (``importer``, ...); the writer
            adds or fills ``partition``, ``alpha`` and ``min_samples``.
        place_images: called with the staging folder once the plan holds; returns per row the image path
            (written, copied under ``images/`` or left in place) or, for a task whose labels are files, the
            entry's fields besides ``id`` (segmentation: ``image``, ``label`` and ``class_voxels``).
        channels: 1 or 3 when every image is converted to it (``--channels``); None keeps them as stored.
        task: ``"segmentation"`` for label maps (the datalists declare it; the summary counts cases and voxels);
            None for classification.
    """

    rows: Sequence[Row]
    class_names: Sequence[str]
    spatial_dims: int
    image_size: Sequence[int] | None
    source: str
    info: Mapping[str, Any]
    place_images: Callable[[Path], Sequence[str | Mapping[str, Any]]]
    channels: int | None = None
    task: str | None = None


@dataclass(frozen=True)
class FederationPlan:
    """Which rows go where.

    Attributes:
        splits: row indices of the global ``train`` pool, ``val`` and ``test``.
        sites: one index array into ``splits["train"]`` per site.
        partition: ``"dirichlet"``, ``"iid"`` or ``"natural"``.
        source_sites: natural site names (manifest ``site`` column) of the sites, or None.
        holdout: indices into ``sites`` of the sites kept out of training (``--holdout-sites``).
    """

    splits: Mapping[str, np.ndarray]
    sites: Sequence[np.ndarray]
    partition: str
    source_sites: Sequence[str] | None = None
    holdout: Sequence[int] = ()


def site_name(index: int) -> str:
    """FLARE simulator's name of the ``index``-th site (0-based): ``site-1``, ``site-2``, ..."""
    return f"site-{index + 1}"


def partition_facts(partition: str, settings: ImportSettings) -> dict[str, Any]:
    """The partition as ``summary.json`` records it."""
    alpha = settings.alpha if partition == "dirichlet" else None
    return {"partition": partition, "alpha": alpha, "min_samples": settings.min_samples}


# --------------------------------------------------------------------------------------------- planning


def _carve_global_splits(labels: np.ndarray, settings: ImportSettings) -> dict[str, np.ndarray]:
    """Stratified global test / val / train split of a pool that has no official split."""
    test_fraction, val_fraction = settings.global_test_fraction, settings.global_val_fraction
    everything = np.arange(labels.size)
    rest, test = partitioners.stratified_local_split(everything, labels, test_fraction, settings.seed)
    relative_val = val_fraction / (1.0 - test_fraction) if val_fraction else 0.0
    train, val = partitioners.stratified_local_split(rest, labels, min(relative_val, 0.99), settings.seed + 1)
    return {"train": train, "val": val, "test": test}


def _partition(labels: np.ndarray, settings: ImportSettings, source: str) -> list[np.ndarray]:
    """Dirichlet or IID partition of the training pool; every failure is a DataError naming the source."""
    if settings.num_sites is None:
        raise DataError(source, "give --sites N (or a 'site' column for a natural partition)", field="num_sites")
    try:
        if settings.partition == "dirichlet":
            return partitioners.dirichlet_partition(
                labels, settings.num_sites, settings.alpha, settings.seed, min_samples=settings.min_samples
            )
        if settings.partition == "iid":
            return partitioners.iid_partition(
                labels, settings.num_sites, settings.seed, min_samples=max(settings.min_samples, 1)
            )
    except (partitioners.PartitionError, ValueError) as error:
        raise DataError(source, str(error), field="num_sites") from None
    raise DataError(source, f"unknown partition {settings.partition!r}; expected one of {PARTITIONS}", field="partition")


def _natural_sites(
    site_of_row: Sequence[str], train: np.ndarray, settings: ImportSettings, source: str
) -> tuple[list[str], list[np.ndarray]]:
    """One site per ``site`` value, in sorted order; each must keep ``min_samples`` training samples."""
    names, members = partitioners.natural_partition([site_of_row[i] for i in train])
    for name in sorted(set(site_of_row)):
        if name not in names:
            raise DataError(source, f"site {name!r} has no training samples (all its rows are val/test)", field="site")
    order = sorted(range(len(names)), key=lambda k: names[k])
    source_sites = [names[k] for k in order]
    sites = [np.sort(members[k]) for k in order]
    for name, member in zip(source_sites, sites):
        if member.size < settings.min_samples:
            raise DataError(
                source, f"site {name!r} has {member.size} < {settings.min_samples} training samples (--min-samples)",
                field="site",
            )
    return source_sites, sites


def plan_federation(catalog: Catalog, settings: ImportSettings) -> FederationPlan:
    """Global splits (the source's, else a stratified carve) and the sites, before anything is written."""
    settings.check(catalog.source)
    rows = catalog.rows
    labels = np.asarray([r.label for r in rows], dtype=np.int64)
    if any(r.split is not None for r in rows):
        split_of = np.asarray([r.split or "train" for r in rows])
        splits = {s: np.flatnonzero(split_of == s) for s in SPLITS}
    else:
        splits = _carve_global_splits(labels, settings)
    if any(r.site is not None for r in rows):
        site_of_row = [r.site or "" for r in rows]
        source_sites, sites = _natural_sites(site_of_row, splits["train"], settings, catalog.source)
        return FederationPlan(splits, sites, "natural", source_sites, _holdout(len(sites), settings, catalog.source))
    sites = _partition(labels[splits["train"]], settings, catalog.source)
    return FederationPlan(splits, sites, settings.partition, None, _holdout(len(sites), settings, catalog.source))


def _holdout(num_sites: int, settings: ImportSettings, source: str) -> tuple[int, ...]:
    """The seeded choice of ``settings.holdout_sites`` sites that never train; at least 2 must remain."""
    if not settings.holdout_sites:
        return ()
    if num_sites - settings.holdout_sites < 2:
        raise DataError(
            source, f"holding out {settings.holdout_sites} of {num_sites} sites leaves fewer than 2 to train", field="holdout_sites"
        )
    rng = np.random.default_rng([settings.seed, num_sites, settings.holdout_sites])
    return tuple(sorted(int(k) for k in rng.choice(num_sites, size=settings.holdout_sites, replace=False)))


def site_names(plan: FederationPlan, settings: ImportSettings, source: str) -> list[str]:
    """The datalist name of each site of ``plan``: ``holdout-j`` for held-out sites; for the others a
    manifest's site value (through ``settings.site_names``), else ``site-1 ...`` in order."""
    names, trained, held = [], 0, 0
    mapping = dict(settings.site_names or {})
    unknown = sorted(set(mapping) - set(plan.source_sites or ()))
    if unknown:
        raise DataError(source, f"no site {unknown[0]!r} in the data; its sites: {sorted(plan.source_sites or [])}", field="site_names")
    for k in range(len(plan.sites)):
        if k in plan.holdout:
            held += 1
            names.append(f"holdout-{held}")
            continue
        trained += 1
        name = mapping.get(plan.source_sites[k], plan.source_sites[k]) if plan.source_sites else site_name(trained - 1)
        check_site_name(name, source, field="site_names" if plan.source_sites and plan.source_sites[k] in mapping else "site")
        names.append(name)
    if len(set(names)) != len(names):
        raise DataError(source, f"two sites would share a datalist name: {sorted(n for n in names if names.count(n) > 1)[0]}", field="site_names")
    return names


# --------------------------------------------------------------------------------------------- writing


def open_output(out: str | os.PathLike, overwrite: bool):
    """``atomic_directory`` whose refusal to overwrite is a DataError naming ``out``.

    Staging folders that an interrupted earlier write into the same ``out`` left behind (``.out.*.partial``,
    ``.out.old``) are removed first; two writes into one ``out`` at a time are not supported.
    """
    target = Path(out).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise DataError(target, "exists and is not a folder", field="out")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise DataError(target, "output folder exists and is not empty (use --overwrite to replace it)", field="out")
    remove_stale_staging(target)
    return atomic_directory(target, overwrite=overwrite)


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove the staging folders an interrupted write into ``target`` left beside it; returns them."""
    if not target.parent.is_dir():
        return []
    stale = [*target.parent.glob(f".{glob.escape(target.name)}.*.partial"), target.with_name(f".{target.name}.old")]
    removed = [path for path in stale if path.is_dir()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def import_catalog(out: str | os.PathLike, catalog: Catalog, settings: ImportSettings) -> dict:
    """Plan, then write the federation into ``out`` atomically; returns the summary."""
    plan = plan_federation(catalog, settings)
    with open_output(out, settings.overwrite) as folder:
        return write_federation(folder, catalog, plan, settings)


def _write_site(
    folder: Path, k: int, members: np.ndarray, pool: list[dict], labels: np.ndarray, common: dict, *,
    settings: ImportSettings, plan: FederationPlan, source: str, name: str, task: str | None,
) -> dict:
    """Write ``<name>.json`` (stratified local split of its members; a held-out site's samples all under
    ``test``); return its summary entry."""
    source_site = plan.source_sites[k] if plan.source_sites else None
    where = name + (f" ({source_site})" if source_site else "")
    if members.size == 0:
        raise DataError(source, f"{where} is empty after partition", field=name)
    if k in plan.holdout:  # never trains: everything of it is unseen
        train_idx, test_idx = members[:0], members
    else:
        train_idx, test_idx = partitioners.stratified_local_split(
            members, labels, settings.local_test_fraction, settings.seed + k
        )
    if train_idx.size == 0 and k not in plan.holdout:
        raise DataError(source, f"{where} has no training samples after the local split", field=name)
    training = [pool[i] for i in train_idx]
    local_test = [pool[i] for i in test_idx]
    extra = {"site": name, **({"source_site": source_site} if source_site else {})}
    write_datalist(folder / f"{name}.json", training=training, test=local_test, extra=extra, **common)
    return {
        **({"source_site": source_site} if source_site else {}),
        "num_train": len(training),
        "num_test": len(local_test),
        "train_counts": split_counts(training, common["num_classes"], task),
        "test_counts": split_counts(local_test, common["num_classes"], task),
    }


def _write_global_lists(folder: Path, validation: list[dict], test: list[dict], common: dict) -> None:
    if test:
        write_datalist(folder / "global_test.json", test=test, extra={"site": "global_test"}, **common)
    if validation:
        # The same list under "test" too, so evaluation code reads global_val.json like any test list.
        write_datalist(
            folder / "global_val.json",
            validation=validation,
            test=validation,
            extra={"site": "global_val", "_comment_": "'test' repeats 'validation' so it evaluates like a test list"},
            **common,
        )


def _entry(row: Row, placed: str | Mapping[str, Any]) -> dict[str, Any]:
    """A row's datalist entry: its placed image with its class, or a dense task's placed fields, and its id."""
    if isinstance(placed, str):
        return {"image": placed, "label": int(row.label), "id": row.id}
    return {"image": placed["image"], "label": placed["label"], "id": row.id, **{k: v for k, v in placed.items() if k not in ("image", "label")}}


def write_federation(folder: Path, catalog: Catalog, plan: FederationPlan, settings: ImportSettings) -> dict:
    """Place the images, then write site datalists, global lists and the summary into ``folder``.

    ``folder`` is a staging folder (:func:`import_catalog` and the demo data move it into place atomically);
    image paths below it are written relative to it.

    Returns:
        the summary dict (also written to ``summary.json`` / ``summary.txt``).
    """
    entries = [_entry(row, placed) for row, placed in zip(catalog.rows, catalog.place_images(folder))]
    pool, validation, test = ([entries[i] for i in plan.splits[s]] for s in SPLITS)
    num_classes, task = len(catalog.class_names), catalog.task
    common = dict(
        num_classes=num_classes,
        class_names=list(catalog.class_names),
        spatial_dims=catalog.spatial_dims,
        image_size=list(catalog.image_size) if catalog.image_size is not None else None,
        **({"channels": catalog.channels} if catalog.channels is not None else {}),
        **({"task": task} if task else {}),
    )
    source = catalog.source or str(folder)
    # The local splits are stratified by the rows' labels (a segmentation case's dominant class).
    labels = np.asarray([int(catalog.rows[i].label) for i in plan.splits["train"]], dtype=np.int64)
    names = site_names(plan, settings, source)
    written = {
        name: _write_site(folder, k, members, pool, labels, common, settings=settings, plan=plan, source=source, name=name, task=task)
        for k, (name, members) in enumerate(zip(names, plan.sites))
    }
    summary_sites = {name: entry for name, entry in written.items() if not name.startswith("holdout-")}
    holdout_sites = {name: entry for name, entry in written.items() if name.startswith("holdout-")}
    _write_global_lists(folder, validation, test, common)
    info = dict(catalog.info)
    info.update(partition_facts(plan.partition, settings))  # keys the source placed keep their position
    summary = {
        "source": catalog.source,
        **info,
        "seed": settings.seed,
        "local_test_fraction": settings.local_test_fraction,
        **common,
        "num_sites": len(summary_sites),
        "sites": summary_sites,
        **({"holdout_sites": holdout_sites} if holdout_sites else {}),
        "global_val_counts": split_counts(validation, num_classes, task),
        "global_test_counts": split_counts(test, num_classes, task),
    }
    atomic_write_json(folder / "summary.json", summary)
    atomic_write_text(folder / "summary.txt", format_summary(summary))
    return summary
