"""Importers: MedMNIST ``.npz`` (2D and 3D), class-folder trees and CSV manifests -> per-site datalists.

Every importer writes one output folder, built whole in a staging folder and moved into place at the end
(``fedkper_monai.io.atomic_directory``), so an error leaves nothing in ``--out``. Output contract::

    DIR/site-1.json ... DIR/site-N.json   training + local test ("test") of each site (FLARE's site names)
    DIR/global_test.json                   the global test set, under "test"
    DIR/global_val.json                    the global validation set, under "validation" and again under "test"
                                           (so it can be evaluated exactly like a test list)
    DIR/summary.json, DIR/summary.txt      per-site class counts
    DIR/images/<split>/<id>.png|.nii.gz    images written by the importer, shared by all datalists

Every datalist carries num_classes, class_names, spatial_dims and image_size. Ids are unique across all
files of one output (``train-000123``, ``test-000045``, ...).
"""

from __future__ import annotations

import csv
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fedkper_monai.data.datalist import class_counts, write_datalist
from fedkper_monai.data.partition import (
    PartitionError,
    dirichlet_partition,
    iid_partition,
    natural_partition,
    stratified_local_split,
)
from fedkper_monai.errors import DataError
from fedkper_monai.io import atomic_directory, atomic_write_json, atomic_write_text

__all__ = [
    "IMAGE_SUFFIXES",
    "PARTITIONS",
    "FileImportOptions",
    "import_arrays",
    "import_folders",
    "import_manifest",
    "import_medmnist",
    "load_npz_splits",
    "site_name",
    "write_federation",
]

PARTITIONS = ("dirichlet", "iid")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz", ".dcm")
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FileImportOptions:
    """Settings of :func:`import_folders` and :func:`import_manifest` (the flags of ``prepare folders|manifest``).

    Attributes:
        num_sites: sites of the Dirichlet/IID partition (a manifest's ``site`` column replaces it).
        alpha, seed, partition, min_samples, local_test_fraction: the partition, as in :func:`import_medmnist`.
        global_test_fraction, global_val_fraction: stratified global shares when no split is given.
        image_size: task size after transforms (default: the images' common size).
        spatial_dims: 2 or 3 (default: from the images).
        copy: copy the images under ``out/images`` instead of referencing them in place.
        overwrite: replace a non-empty ``out``.
        progress: show progress bars.
    """

    num_sites: int | None = None
    alpha: float = 0.1
    seed: int = 0
    partition: str = "dirichlet"
    min_samples: int = 10
    local_test_fraction: float = 0.2
    global_test_fraction: float = 0.2
    global_val_fraction: float = 0.1
    image_size: Sequence[int] | None = None
    spatial_dims: int | None = None
    copy: bool = False
    overwrite: bool = False
    progress: bool = True


def site_name(index: int) -> str:
    """FLARE simulator's name of the ``index``-th site (0-based): ``site-1``, ``site-2``, ..."""
    return f"site-{index + 1}"


def _progress(iterable: Iterable, *, total: int, desc: str, enabled: bool) -> Iterable:
    from tqdm.auto import tqdm

    # Short jobs do not need a bar; long ones (thousands of images) do.
    return tqdm(iterable, total=total, desc=desc, unit="img", disable=not enabled or total < 500, leave=False)


# --------------------------------------------------------------------------------------------- partition


def _partition(
    labels: np.ndarray,
    *,
    source: str | os.PathLike,
    partition: str,
    num_sites: int,
    alpha: float,
    seed: int,
    min_samples: int,
) -> list[np.ndarray]:
    """Partition the training pool, turning every failure into a DataError that names the source."""
    try:
        if partition == "dirichlet":
            return dirichlet_partition(labels, num_sites, alpha, seed, min_samples=min_samples)
        if partition == "iid":
            return iid_partition(labels, num_sites, seed, min_samples=max(min_samples, 1))
    except (PartitionError, ValueError) as error:
        raise DataError(source, str(error), field="--sites") from None
    raise DataError(source, f"unknown partition {partition!r}; expected one of {PARTITIONS}", field="--partition")


def _carve_global_splits(
    labels: np.ndarray, *, test_fraction: float, val_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Stratified global test / val / train split of a pool that has no official split."""
    everything = np.arange(labels.size)
    rest, test = stratified_local_split(everything, labels, test_fraction, seed)
    relative_val = val_fraction / (1.0 - test_fraction) if val_fraction else 0.0
    train, val = stratified_local_split(rest, labels, min(relative_val, 0.99), seed + 1)
    return {"train": train, "val": val, "test": test}


# --------------------------------------------------------------------------------------------- writing


def write_federation(
    folder: Path,
    *,
    pool: Sequence[Mapping[str, Any]],
    sites: Sequence[np.ndarray],
    validation: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    num_classes: int,
    class_names: Sequence[str],
    spatial_dims: int,
    image_size: Sequence[int] | None,
    seed: int,
    local_test_fraction: float = 0.2,
    source: str = "",
    info: Mapping[str, Any] | None = None,
    source_sites: Sequence[str] | None = None,
) -> dict:
    """Write site datalists, global lists and the summary into ``folder`` (already a staging folder).

    Args:
        folder: output folder; image paths below it are written relative to it.
        pool: training pool entries ``{"image", "label", "id"}`` (absolute image paths).
        sites: one index array into ``pool`` per site (from a partitioner).
        validation: global validation entries.
        test: global test entries.
        seed: seed of the local splits (site k uses ``seed + k``).
        local_test_fraction: share of each site's data held out as its local test split (stratified).
        source: where the data came from (for the summary and errors).
        info: extra facts for ``summary.json`` (partition, alpha, ...).
        source_sites: natural site names (manifest ``site`` column), recorded beside FLARE's names.

    Returns:
        the summary dict (also written to ``summary.json`` / ``summary.txt``).
    """
    labels = np.asarray([int(e["label"]) for e in pool], dtype=np.int64)
    common = dict(
        num_classes=num_classes,
        class_names=list(class_names),
        spatial_dims=spatial_dims,
        image_size=list(image_size) if image_size is not None else None,
    )
    summary_sites: dict[str, Any] = {}
    for k, members in enumerate(sites):
        name = site_name(k)
        where = f"{name}" + (f" ({source_sites[k]})" if source_sites else "")
        if members.size == 0:
            raise DataError(source or folder, f"{where} is empty after partition", field=name)
        train_idx, test_idx = stratified_local_split(members, labels, local_test_fraction, seed + k)
        if train_idx.size == 0:
            raise DataError(source or folder, f"{where} has no training samples after the local split", field=name)
        training = [pool[i] for i in train_idx]
        local_test = [pool[i] for i in test_idx]
        extra = {"site": name}
        if source_sites:
            extra["source_site"] = source_sites[k]
        write_datalist(folder / f"{name}.json", training=training, test=local_test, extra=extra, **common)
        summary_sites[name] = {
            **({"source_site": source_sites[k]} if source_sites else {}),
            "num_train": len(training),
            "num_test": len(local_test),
            "train_counts": class_counts(training, num_classes),
            "test_counts": class_counts(local_test, num_classes),
        }
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
    summary = {
        "source": source,
        **dict(info or {}),
        "seed": seed,
        "local_test_fraction": local_test_fraction,
        **common,
        "num_sites": len(sites),
        "sites": summary_sites,
        "global_val_counts": class_counts(validation, num_classes),
        "global_test_counts": class_counts(test, num_classes),
    }
    atomic_write_json(folder / "summary.json", summary)
    atomic_write_text(folder / "summary.txt", format_summary(summary))
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """Readable per-site class-count table: training count per class, local test count in brackets."""
    names = summary["class_names"]
    rows: list[tuple[str, str, str, list[str]]] = []
    for name, site in summary["sites"].items():
        cells = [f"{a}({b})" if b else str(a) for a, b in zip(site["train_counts"], site["test_counts"])]
        rows.append((name, str(site["num_train"]), str(site["num_test"]), cells))
    for label, key in (("global_val", "global_val_counts"), ("global_test", "global_test_counts")):
        counts = summary[key]
        rows.append((label, str(sum(counts)), "", [str(c) for c in counts]))
    width = max([len(str(i)) for i in range(len(names))] + [len(c) for r in rows for c in r[3]]) + 1
    lines = [
        f"source: {summary.get('source', '')}",
        f"partition: {summary.get('partition', '')}  alpha: {summary.get('alpha', '')}  seed: {summary['seed']}  "
        f"sites: {summary['num_sites']}  classes: {len(names)}  spatial_dims: {summary['spatial_dims']}  "
        f"image_size: {summary['image_size']}",
        "classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)),
        "per-site counts: training per class (local test in brackets)",
        f"{'site':<12}{'train':>7}{'test':>6} " + "".join(f"{i:>{width}}" for i in range(len(names))),
    ]
    for name, train, test, cells in rows:
        lines.append(f"{name:<12}{train:>7}{test:>6} " + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines) + "\n"


def _output(out: str | os.PathLike, overwrite: bool):
    """``atomic_directory`` whose refusal to overwrite is a DataError naming ``--out``."""
    target = Path(out).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise DataError(target, "exists and is not a folder", field="--out")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise DataError(target, "output folder exists and is not empty (use --overwrite to replace it)", field="--out")
    return atomic_directory(target, overwrite=overwrite)


# --------------------------------------------------------------------------------------------- arrays / npz


def load_npz_splits(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a MedMNIST-layout ``.npz``: ``{split: (images, labels)}`` for train, val, test.

    Images are uint8 (N, H, W), (N, H, W, 3) or volumes (N, D, H, W); labels (N,) or (N, 1).

    Raises:
        DataError: unreadable or truncated file, missing keys, mismatched lengths, multi-label labels.
    """
    npz_path = Path(path).expanduser().absolute()
    if not npz_path.is_file():
        raise DataError(npz_path, "file not found", field="--npz")
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with np.load(npz_path, allow_pickle=False) as archive:
            keys = set(archive.files)
            for split in _SPLITS:
                image_key, label_key = f"{split}_images", f"{split}_labels"
                if image_key not in keys or label_key not in keys:
                    if split == "train":
                        raise DataError(npz_path, f"missing key {image_key!r} or {label_key!r}", field=image_key)
                    continue
                images, labels = archive[image_key], archive[label_key]
                splits[split] = (images, labels)
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as error:
        raise DataError(npz_path, f"cannot read .npz (truncated or corrupt?): {type(error).__name__}: {error}") from None
    for split, (images, labels) in splits.items():
        if labels.ndim == 2 and labels.shape[1] != 1:
            raise DataError(npz_path, f"labels have shape {labels.shape}: multi-label sets are not supported", field=f"{split}_labels")
        if labels.reshape(-1).size != images.shape[0]:
            raise DataError(
                npz_path, f"{images.shape[0]} images but {labels.reshape(-1).size} labels", field=f"{split}_labels"
            )
        if images.ndim not in (3, 4):
            raise DataError(npz_path, f"images have shape {images.shape}; expected (N,H,W), (N,H,W,3) or (N,D,H,W)", field=f"{split}_images")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(npz_path, f"labels must be integers, got {labels.dtype}", field=f"{split}_labels")
    return splits


def _array_kind(images: np.ndarray, spatial_dims: int | None) -> int:
    """2 for (N,H,W) and (N,H,W,3|4); 3 for (N,D,H,W) volumes (or as forced)."""
    if spatial_dims is not None:
        return spatial_dims
    if images.ndim == 3:
        return 2
    return 2 if images.shape[-1] in (3, 4) else 3


def _save_image(array: np.ndarray, path: Path, spatial_dims: int) -> None:
    if spatial_dims == 2:
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(array)).save(path, compress_level=1)
    else:
        import nibabel as nib

        nib.Nifti1Image(np.ascontiguousarray(array), affine=np.eye(4)).to_filename(str(path))


def import_arrays(
    folder: Path,
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    class_names: Sequence[str] | None,
    num_sites: int,
    alpha: float,
    seed: int,
    partition: str = "dirichlet",
    min_samples: int = 10,
    local_test_fraction: float = 0.2,
    spatial_dims: int | None = None,
    source: str = "",
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
) -> dict:
    """Write image arrays as PNG (2D) / NIfTI (3D) into ``folder/images`` and the federation beside them.

    ``folder`` must be a staging folder (the callers wrap it in an atomic rename). The train split is
    partitioned over the sites; ``val`` becomes the global validation list and ``test`` the global test list.
    Partitioning runs first, so a bad partition fails before any image is written.

    Returns:
        the summary (see :func:`write_federation`).
    """
    train_images, train_labels = splits["train"]
    dims = _array_kind(train_images, spatial_dims)
    labels = {s: np.asarray(y).reshape(-1).astype(np.int64) for s, (_, y) in splits.items()}
    all_labels = np.concatenate(list(labels.values()))
    if all_labels.size and all_labels.min() < 0:
        raise DataError(source, f"negative label {int(all_labels.min())}", field="labels")
    num_classes = len(class_names) if class_names is not None else int(all_labels.max()) + 1
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    for split, y in labels.items():
        if y.size and y.max() >= num_classes:
            bad = int(np.flatnonzero(y >= num_classes)[0])
            raise DataError(source, f"label {int(y[bad])} is out of range [0, {num_classes})", field=f"{split}_labels[{bad}]")
    sites = _partition(
        labels["train"], source=source, partition=partition, num_sites=num_sites, alpha=alpha, seed=seed,
        min_samples=min_samples,
    )
    image_size = list(train_images.shape[1 : 1 + dims])
    suffix = ".png" if dims == 2 else ".nii.gz"
    entries: dict[str, list[dict]] = {}
    for split, (images, _) in splits.items():
        split_dir = folder / "images" / split
        split_dir.mkdir(parents=True, exist_ok=True)
        split_entries = []
        for i in _progress(range(images.shape[0]), total=images.shape[0], desc=f"writing {split}", enabled=progress):
            sample_id = f"{split}-{i:06d}"
            path = split_dir / f"{sample_id}{suffix}"
            _save_image(images[i], path, dims)
            split_entries.append({"image": str(path), "label": int(labels[split][i]), "id": sample_id})
        entries[split] = split_entries
    return write_federation(
        folder,
        pool=entries["train"],
        sites=sites,
        validation=entries.get("val", []),
        test=entries.get("test", []),
        num_classes=num_classes,
        class_names=names,
        spatial_dims=dims,
        image_size=image_size,
        seed=seed,
        local_test_fraction=local_test_fraction,
        source=source,
        info={"partition": partition, "alpha": alpha if partition == "dirichlet" else None,
              "min_samples": min_samples, **dict(info or {})},
    )


def import_medmnist(
    out: str | os.PathLike,
    *,
    npz: str | os.PathLike | None = None,
    flag: str | None = None,
    size: int = 28,
    num_sites: int,
    alpha: float = 0.1,
    seed: int = 0,
    partition: str = "dirichlet",
    min_samples: int = 10,
    local_test_fraction: float = 0.2,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    progress: bool = True,
) -> dict:
    """Import a MedMNIST ``.npz`` (a local file, or downloaded by ``flag``) into ``out``.

    Args:
        out: output folder (see the module docstring for its layout).
        npz: local ``.npz`` path; or
        flag: MedMNIST name (``bloodmnist``, ``organcmnist``, ``organmnist3d``, ...), downloaded with an MD5 check.
        size: image size of the download (28, 64, 128, 224).
        num_sites / alpha / seed / partition / min_samples: the site partition of the train split.
        local_test_fraction: each site's stratified local test share.
        class_names: names of the classes; default from the MedMNIST table when the file name matches a flag,
            else ``"0".."C-1"``.

    Returns:
        the summary dict.
    """
    from fedkper_monai.data.medmnist import MEDMNIST, download_medmnist

    if (npz is None) == (flag is None):
        raise DataError(str(out), "give exactly one of --npz PATH or --flag NAME", field="--npz/--flag")
    if npz is None:
        npz = download_medmnist(str(flag), size, cache_dir=cache_dir, mirror=mirror, progress=progress)
    npz_path = Path(npz).expanduser().absolute()
    splits = load_npz_splits(npz_path)
    if class_names is None:
        stem = npz_path.stem.lower().split("_")[0]
        known = MEDMNIST.get(flag.lower() if flag else stem)
        if known is not None:
            class_names = known.class_names
    with _output(out, overwrite) as folder:
        return import_arrays(
            folder, splits, class_names=class_names, num_sites=num_sites, alpha=alpha, seed=seed,
            partition=partition, min_samples=min_samples, local_test_fraction=local_test_fraction,
            source=str(npz_path), progress=progress, info={"importer": "medmnist"},
        )


# --------------------------------------------------------------------------------------------- files


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _probe_images(
    rows: Sequence[dict], *, source: str | os.PathLike, fields: Sequence[str], spatial_dims: int | None, progress: bool
) -> tuple[int, list[int]]:
    """Decode every image once (a corrupt file fails here, before any output), return (spatial_dims, size).

    The size is the common spatial size of all images; None when they differ.
    """
    from monai.transforms import LoadImage

    from fedkper_monai.data.transforms import EnsureSpatialDimsd

    loader = LoadImage(image_only=True, ensure_channel_first=True)
    sizes: set[tuple[int, ...]] = set()
    dims = spatial_dims
    for row, where in _progress(zip(rows, fields), total=len(rows), desc="checking images", enabled=progress):
        path = row["image"]
        if not Path(path).exists():
            raise DataError(source, f"image file not found: {path}", field=where)
        try:
            image = loader(path)
            if dims is None:
                squeezed = image
                while squeezed.ndim > 3 and squeezed.shape[-1] == 1:
                    squeezed = squeezed[..., 0]
                dims = 3 if squeezed.ndim == 4 and squeezed.shape[-1] not in (3, 4) else 2
            image = EnsureSpatialDimsd("image", spatial_dims=dims)({"image": image})["image"]
        except Exception as error:
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise DataError(source, f"cannot read image {path}: {type(cause).__name__}: {cause}", field=where) from None
        sizes.add(tuple(int(s) for s in image.shape[1:]))
    size = list(next(iter(sizes))) if len(sizes) == 1 else None
    return dims or 2, size


def _import_rows(
    out: str | os.PathLike,
    rows: list[dict],
    *,
    source: str | os.PathLike,
    fields: list[str],
    class_names: list[str],
    options: FileImportOptions,
    importer: str,
) -> dict:
    """Shared by the folder and manifest importers: rows are ``{image, label, id[, split][, site]}``."""
    image_size = options.image_size
    num_classes = len(class_names)
    labels = np.asarray([r["label"] for r in rows], dtype=np.int64)
    dims, common_size = _probe_images(rows, source=source, fields=fields, spatial_dims=options.spatial_dims, progress=options.progress)
    if image_size is None:
        if common_size is None:
            raise DataError(source, "images differ in size: pass --image-size to resize them all to one size", field="--image-size")
        image_size = common_size
    if len(image_size) != dims:
        raise DataError(source, f"--image-size needs {dims} values for {dims}D images, got {list(image_size)}", field="--image-size")
    # Global splits: given per row, else a stratified carve of the whole pool.
    if any("split" in r for r in rows):
        split_of = np.asarray([r.get("split", "train") for r in rows])
        index = {s: np.flatnonzero(split_of == s) for s in _SPLITS}
    else:
        index = _carve_global_splits(labels, test_fraction=options.global_test_fraction, val_fraction=options.global_val_fraction, seed=options.seed)
    train_rows = index["train"]
    source_sites = None
    if any("site" in r for r in rows):
        names, members = natural_partition([rows[i].get("site", "") for i in train_rows])
        all_sites = sorted({r.get("site", "") for r in rows})
        for name in all_sites:
            if name not in names:
                raise DataError(source, f"site {name!r} has no training samples (all its rows are val/test)", field="site")
        order = sorted(range(len(names)), key=lambda k: names[k])
        source_sites = [names[k] for k in order]
        sites = [np.sort(members[k]) for k in order]
        for name, member in zip(source_sites, sites):
            if member.size < options.min_samples:
                raise DataError(source, f"site {name!r} has {member.size} < {options.min_samples} training samples (--min-samples)", field="site")
        partition_name = "natural"
    else:
        if not options.num_sites:
            raise DataError(source, "give --sites N (or a 'site' column for a natural partition)", field="--sites")
        sites = _partition(labels[train_rows], source=source, partition=options.partition, num_sites=options.num_sites, alpha=options.alpha,
                           seed=options.seed, min_samples=options.min_samples)
        partition_name = options.partition
    with _output(out, options.overwrite) as folder:
        entries = []
        for i, row in enumerate(rows):
            image = Path(row["image"])
            if options.copy:
                relative = Path(row.get("copy_as") or image.name)
                target = folder / "images" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(image, target)
                image = target
            entries.append({"image": str(image), "label": int(row["label"]), "id": row["id"]})
        pick = lambda idx: [entries[i] for i in idx]  # noqa: E731
        return write_federation(
            folder,
            pool=pick(train_rows),
            sites=sites,
            validation=pick(index["val"]),
            test=pick(index["test"]),
            num_classes=num_classes,
            class_names=class_names,
            spatial_dims=dims,
            image_size=image_size,
            seed=options.seed,
            local_test_fraction=options.local_test_fraction,
            source=str(source),
            source_sites=source_sites,
            info={"importer": importer, "partition": partition_name,
                  "alpha": options.alpha if partition_name == "dirichlet" else None, "min_samples": options.min_samples},
        )


def import_folders(root: str | os.PathLike, out: str | os.PathLike, **options: Any) -> dict:
    """Import a class-folder tree ``root/<class_name>/*.png|jpg|nii|nii.gz|dcm``.

    ``options`` are the fields of :class:`FileImportOptions` (``num_sites`` is needed).

    Classes are the sub-folder names in sorted order. If ``root`` holds ``train/`` and ``test/`` (and
    optionally ``val/``) sub-folders, each with class folders, those are the global splits; otherwise a
    stratified ``global_test_fraction`` / ``global_val_fraction`` of the pool is held out. Images stay where
    they are (absolute paths in the datalists) unless ``copy``, which copies them under ``out/images``.
    Every image is decoded once first: a corrupt file stops the import before anything is written.
    """
    settings = FileImportOptions(**options)
    base = Path(root).expanduser().absolute()
    if not base.is_dir():
        raise DataError(base, "folder not found", field="root")
    split_roots = {s: base / s for s in _SPLITS if (base / s).is_dir()}
    has_splits = "train" in split_roots and "test" in split_roots
    roots = split_roots if has_splits else {"": base}
    class_names = sorted(
        {d.name for r in roots.values() for d in r.iterdir() if d.is_dir() and not d.name.startswith(".")}
    )
    if not class_names:
        raise DataError(base, "no class folders found (expected root/<class_name>/<images>)", field="root")
    rows: list[dict] = []
    fields: list[str] = []
    for split, split_root in roots.items():
        for label, name in enumerate(class_names):
            class_dir = split_root / name
            if not class_dir.is_dir():
                continue
            files = sorted(
                p for p in class_dir.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
                and _suffix(p) in IMAGE_SUFFIXES
            )
            for path in files:
                relative = path.relative_to(base)
                row = {"image": str(path), "label": label, "id": relative.as_posix(), "copy_as": relative}
                if split:
                    row["split"] = split
                rows.append(row)
                fields.append(relative.as_posix())
    if not rows:
        raise DataError(base, f"no images with suffix {', '.join(IMAGE_SUFFIXES)} in the class folders", field="root")
    return _import_rows(out, rows, source=base, fields=fields, class_names=class_names,
                        options=settings, importer="folders")


def import_manifest(
    manifest: str | os.PathLike, out: str | os.PathLike, *, class_names: Sequence[str] | None = None, **options: Any
) -> dict:
    """Import a CSV manifest with columns ``image,label`` and optionally ``site``, ``split``, ``id``.

    ``options`` are the fields of :class:`FileImportOptions`.

    ``image`` is a path relative to the CSV's folder or absolute (a DICOM series may be a folder). ``label``
    is a class index or a class name (names are sorted to indices unless ``class_names`` gives the order).
    A ``site`` column gives the natural partition (real hospitals; ``--sites`` is then ignored; sites are
    named site-1..N in sorted order of their values, recorded in the summary). A ``split`` column
    (train/val/test) gives the global splits; otherwise they are carved stratified. ``id`` defaults to the
    image path relative to the CSV's folder.
    """
    settings = FileImportOptions(**options)
    csv_path = Path(manifest).expanduser().absolute()
    if not csv_path.is_file():
        raise DataError(csv_path, "manifest not found", field="--manifest")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            records = [{(k or "").strip(): (v or "").strip() for k, v in rec.items()} for rec in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(csv_path, f"cannot read CSV: {error}") from None
    for required in ("image", "label"):
        if required not in columns:
            raise DataError(csv_path, f"missing column {required!r} (columns: {columns})", field=required)
    if not records:
        raise DataError(csv_path, "no rows", field="rows")
    raw_labels = [rec["label"] for rec in records]
    numeric = all(v.lstrip("-").isdigit() for v in raw_labels)
    if class_names is not None:
        names = list(class_names)
    elif numeric:
        names = [str(c) for c in range(max(int(v) for v in raw_labels) + 1)]
    else:
        names = sorted(set(raw_labels))
    rows: list[dict] = []
    fields: list[str] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        where = f"rows[{i}]"
        value = rec["label"]
        if value.lstrip("-").isdigit():
            label = int(value)
        elif value in names:
            label = names.index(value)
        else:
            raise DataError(csv_path, f"unknown label {value!r}; classes: {names}", field=f"{where}.label")
        if not 0 <= label < len(names):
            raise DataError(csv_path, f"label {label} is out of range [0, {len(names)})", field=f"{where}.label")
        if not rec["image"]:
            raise DataError(csv_path, "empty image path", field=f"{where}.image")
        image = Path(rec["image"]).expanduser()
        image = image if image.is_absolute() else csv_path.parent / image
        sample_id = rec.get("id") or Path(rec["image"]).as_posix()
        if sample_id in seen:
            raise DataError(csv_path, f"duplicate id {sample_id!r} (first at rows[{seen[sample_id]}])", field=f"{where}.id")
        seen[sample_id] = i
        row: dict[str, Any] = {"image": str(image), "label": label, "id": sample_id,
                               "copy_as": Path(f"{i:06d}-{image.name}")}
        if "site" in columns:
            if not rec["site"]:
                raise DataError(csv_path, "empty site", field=f"{where}.site")
            row["site"] = rec["site"]
        if "split" in columns:
            split = rec["split"].lower() or "train"
            split = {"validation": "val", "training": "train"}.get(split, split)
            if split not in _SPLITS:
                raise DataError(csv_path, f"split must be train, val or test, got {rec['split']!r}", field=f"{where}.split")
            row["split"] = split
        rows.append(row)
        fields.append(f"{where}.image")
    return _import_rows(out, rows, source=csv_path, fields=fields, class_names=names,
                        options=settings, importer="manifest")
