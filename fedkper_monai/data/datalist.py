"""Datalist JSON files: one per site (plus the global test and validation lists), MONAI decathlon style.

A datalist reads like the files ``monai.data.load_decathlon_datalist`` reads, with classification fields::

    {
      "num_classes": 5,
      "class_names": ["0", "1", "2", "3", "4"],
      "spatial_dims": 2,                      # optional, default 2
      "image_size": [28, 28],                 # optional: the task's size after transforms
      "channels": 3,                          # optional: every image converted to this many channels (1 or 3)
      "training": [{"image": "images/train/train-000001.png", "label": 3, "id": "train-000001"}, ...],
      "test": [...],
      "validation": [...]                     # optional
    }

A segmentation datalist says ``"task": "segmentation"`` and its ``label`` is a path, like ``image``: a label
map of class indices (NIfTI, a DICOM series folder, or a 2D mask image) on the image's grid; ``num_classes``
counts the background (class 0). Its entries may carry ``class_voxels``, the voxels of each class (written by
``prepare``), from which a site computes its label diversity without reading every label map.

Image paths are relative to the JSON's folder or absolute. ``training``, ``test`` and ``validation`` are each
optional, but at least one must be non-empty (``global_test.json`` holds only ``test``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fedkper_monai.errors import DataError
from fedkper_monai.io import atomic_write_json

__all__ = ["Datalist", "LIST_KEYS", "TASKS", "class_counts", "load_datalist", "write_datalist"]

#: The tasks a datalist may declare; its labels are class integers (classification) or label-map paths.
TASKS: tuple[str, ...] = ("classification", "segmentation")

#: The lists a datalist may hold, in the order they are written.
LIST_KEYS: tuple[str, ...] = ("training", "test", "validation")


@dataclass(frozen=True)
class Datalist:
    """A validated datalist. Entries are ``{"image": <absolute path str>, "label": int, "id": str}``.

    Args:
        path: the JSON file it was read from (or will be written to).
        num_classes: number of classes ``C`` of the task; labels are in ``[0, C)``.
        class_names: ``C`` names, index = label.
        training: the site's training entries.
        test: local test entries (for ``global_test.json``: the global test set).
        validation: validation entries (``global_val.json``).
        spatial_dims: 2 for images, 3 for volumes.
        image_size: the task's spatial size after transforms (for example ``[28, 28]``), or None.
        channels: 1 or 3 when the images mix channel counts and each is converted (the transforms'
            ``channels`` setting); None keeps them as stored.
        task: ``"classification"`` (``label`` an int) or ``"segmentation"`` (``label`` an absolute path).
    """

    path: Path
    num_classes: int
    class_names: list[str]
    training: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    spatial_dims: int = 2
    image_size: list[int] | None = None
    channels: int | None = None
    task: str = "classification"

    def entries(self, which: str) -> list[dict]:
        """The list named ``which`` (one of :data:`LIST_KEYS`)."""
        if which not in LIST_KEYS:
            raise KeyError(f"unknown list {which!r}; expected one of {LIST_KEYS}")
        return getattr(self, which)


def class_counts(entries: Iterable[Mapping[str, Any]], num_classes: int) -> list[int]:
    """Number of entries per class: a list of length ``num_classes``."""
    counts = [0] * num_classes
    for entry in entries:
        counts[int(entry["label"])] += 1
    return counts


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_datalist(
    path: str | os.PathLike,
    *,
    check_files: bool = True,
    num_classes: int | None = None,
    ids_required: bool = True,
    labels_required: bool = True,
) -> Datalist:
    """Read and validate a datalist JSON.

    Checks the schema (``num_classes``, ``class_names`` of that length, list types, required keys),
    that every image exists (when ``check_files``), labels in ``[0, num_classes)`` and ids unique across
    all lists of the file (the one exception: ``global_val.json`` repeats its
    ``validation`` entries unchanged under ``test``). Relative image paths are resolved against the JSON's folder.

    Args:
        path: the JSON file.
        check_files: check that every image (and label map) exists.
        num_classes: the class count of the model the list is for (``predict``, ``evaluate`` with a bundle
            that knows its classes): taken when the file has no ``num_classes`` (a plain MONAI datalist);
            a file's ``num_classes`` that differs is an error.
        ids_required: False for a plain MONAI datalist read by ``predict`` or ``evaluate``: an entry without
            an ``id`` is named by its image path as written (two entries of one image are then a duplicate id).
            Training keeps ids required: the teacher-logit cache and the flips are keyed by them.
        labels_required: False for ``predict``: an entry may have no ``label`` (a label it has is checked) and
            may be a bare image path, as in MONAI's Decathlon ``test`` lists; implies ids not required.

    Raises:
        DataError: naming the file and the field, e.g. ``site-1.json: training[3].label: ...``.
    """
    json_path = Path(path).expanduser().absolute()
    if not json_path.is_file():
        raise DataError(json_path, "datalist file not found")
    try:
        raw = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(json_path, f"not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise DataError(json_path, f"top level must be an object, got {type(raw).__name__}")

    num_classes = _class_count(json_path, raw.get("num_classes"), num_classes)
    class_names = raw.get("class_names", [str(c) for c in range(num_classes)])
    if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
        raise DataError(json_path, "must be a list of strings", field="class_names")
    if len(class_names) != num_classes:
        raise DataError(
            json_path, f"has {len(class_names)} names but num_classes is {num_classes}", field="class_names"
        )
    spatial_dims = raw.get("spatial_dims", 2)
    if spatial_dims not in (2, 3) or not _is_int(spatial_dims):
        raise DataError(json_path, f"must be 2 or 3, got {spatial_dims!r}", field="spatial_dims")
    image_size = raw.get("image_size")
    if image_size is not None and (
        not isinstance(image_size, list)
        or len(image_size) != spatial_dims
        or not all(_is_int(s) and s > 0 for s in image_size)
    ):
        raise DataError(
            json_path, f"must be a list of {spatial_dims} positive integers, got {image_size!r}", field="image_size"
        )
    channels = raw.get("channels")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise DataError(json_path, f"must be 1, 3 or null, got {channels!r}", field="channels")
    task = raw.get("task", "classification")
    if task not in TASKS:
        raise DataError(json_path, f"must be one of {', '.join(TASKS)}, got {task!r}", field="task")
    if task == "segmentation" and num_classes < 2:
        raise DataError(json_path, f"a segmentation task needs background and a foreground class, got {num_classes}", field="num_classes")

    lists: dict[str, list[dict]] = {}
    seen_ids: dict[str, str] = {}
    seen_entries: dict[str, dict] = {}
    if not labels_required:
        required: tuple[str, ...] = ("image",)
    else:
        required = ("image", "label", "id") if ids_required else ("image", "label")
    for key in LIST_KEYS:
        items = raw.get(key, [])
        if not isinstance(items, list):
            raise DataError(json_path, f"must be a list, got {type(items).__name__}", field=key)
        lists[key] = [
            _validate_entry(json_path, f"{key}[{i}]", item, num_classes, seen_ids, check_files, seen_entries, task,
                            required=required)
            for i, item in enumerate(items)
        ]
    if not any(lists.values()):
        raise DataError(json_path, "no entries: at least one of 'training', 'test', 'validation' must be non-empty")
    return Datalist(
        path=json_path,
        num_classes=num_classes,
        class_names=list(class_names),
        spatial_dims=spatial_dims,
        image_size=list(image_size) if image_size is not None else None,
        channels=channels,
        task=task,
        **lists,
    )


def _class_count(json_path: Path, declared: Any, known: int | None) -> int:
    """The file's ``num_classes``, else the model's (``known``); the two must agree when both are given."""
    if declared is None and known is not None:
        return int(known)
    if not _is_int(declared) or declared < 1:
        raise DataError(json_path, f"must be a positive integer, got {declared!r}", field="num_classes")
    if known is not None and declared != known:
        raise DataError(json_path, f"is {declared}, but the model has {known} classes (outputs)", field="num_classes")
    return declared


def _same_in_val_and_test(first: str, where: str, item: dict, seen_entries: dict[str, dict]) -> bool:
    """global_val.json repeats its "validation" list under "test": the one allowed repeat of an id."""
    lists = {first.split("[")[0], where.split("[")[0]}
    earlier = seen_entries[item["id"]]
    return lists == {"test", "validation"} and (earlier["image"], earlier.get("label")) == (item["image"], item.get("label"))


def _validate_entry(
    json_path: Path,
    where: str,
    item: Any,
    num_classes: int,
    seen_ids: dict[str, str],
    check_files: bool,
    seen_entries: dict[str, dict],
    task: str = "classification",
    required: tuple[str, ...] = ("image", "label", "id"),
) -> dict:
    """Validate one entry and return it with its image (and label map) path made absolute.

    ``required``: the keys an entry must have (see :func:`load_datalist`); without ``"label"`` a bare path string
    is an entry too, and without ``"id"`` the image path as written is its id.
    """
    if isinstance(item, str) and "label" not in required:
        item = {"image": item}
    if not isinstance(item, dict):
        raise DataError(json_path, f"must be an object, got {type(item).__name__}", field=where)
    for key in required:
        if key not in item:
            raise DataError(json_path, f"missing required key {key!r}", field=where)
    image = item["image"]
    if not isinstance(image, str) or not image:
        raise DataError(json_path, f"must be a non-empty path string, got {image!r}", field=f"{where}.image")
    if "id" not in item:
        item = {**item, "id": image}
    label = item.get("label")
    if label is not None or "label" in required:  # else an unlabelled image for predict
        _check_label(json_path, where, item, label, num_classes, task)
    sample_id = item["id"]
    if not isinstance(sample_id, str) or not sample_id:
        raise DataError(json_path, f"must be a non-empty string, got {sample_id!r}", field=f"{where}.id")
    first = seen_ids.get(sample_id)
    if first is not None and not _same_in_val_and_test(first, where, item, seen_entries):
        raise DataError(json_path, f"duplicate id {sample_id!r} (first used at {first})", field=f"{where}.id")
    seen_ids.setdefault(sample_id, where)
    seen_entries.setdefault(sample_id, item)
    entry = dict(item)
    entry["image"] = _resolve(json_path, where, "image", image, check_files)
    if label is None:
        entry.pop("label", None)
    elif task == "segmentation":
        entry["label"] = _resolve(json_path, where, "label", label, check_files)
    return entry


def _check_label(json_path: Path, where: str, item: dict, label: Any, num_classes: int, task: str) -> None:
    """An entry's label: a class index in ``[0, num_classes)``, or a label-map path for segmentation."""
    if task == "segmentation":
        if not isinstance(label, str) or not label:
            raise DataError(json_path, f"must be a label-map path (task segmentation), got {label!r}", field=f"{where}.label")
        voxels = item.get("class_voxels")
        if voxels is not None and (not isinstance(voxels, list) or len(voxels) != num_classes or not all(_is_int(v) and v >= 0 for v in voxels)):
            raise DataError(json_path, f"must be {num_classes} non-negative voxel counts, got {voxels!r}", field=f"{where}.class_voxels")
    elif not _is_int(label):
        raise DataError(json_path, f"must be an integer, got {label!r}", field=f"{where}.label")
    elif not 0 <= label < num_classes:
        raise DataError(json_path, f"label {label} is out of range [0, {num_classes})", field=f"{where}.label")


def _resolve(json_path: Path, where: str, key: str, value: str, check_files: bool) -> str:
    """``value`` as an absolute path (relative ones against the JSON's folder); checked to exist."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = json_path.parent / path
    path = Path(os.path.normpath(path))
    # A DICOM series may be given as a folder; every other image is a file.
    if check_files and not path.exists():
        raise DataError(json_path, f"{key} file not found: {path}", field=f"{where}.{key}")
    return str(path)


def write_datalist(
    path: str | os.PathLike,
    datalist: Datalist | None = None,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    training: Sequence[Mapping[str, Any]] = (),
    test: Sequence[Mapping[str, Any]] = (),
    validation: Sequence[Mapping[str, Any]] = (),
    spatial_dims: int = 2,
    image_size: Sequence[int] | None = None,
    extra: Mapping[str, Any] | None = None,
    channels: int | None = None,
    task: str = "classification",
) -> Path:
    """Write a datalist JSON atomically, image paths relative to the JSON's folder where they lie below it.

    Pass either a :class:`Datalist` or the fields. Empty lists are left out, except that a file always has
    at least one list. Images outside the JSON's folder keep their absolute path (a ``../..`` path would break
    when the folder moves). ``extra`` adds top-level fields (for example a ``"_comment_"``).

    Returns:
        the path written.
    """
    target = Path(path).expanduser().absolute()
    if datalist is not None:
        num_classes, class_names = datalist.num_classes, datalist.class_names
        training, test, validation = datalist.training, datalist.test, datalist.validation
        spatial_dims, image_size, channels = datalist.spatial_dims, datalist.image_size, datalist.channels
        task = datalist.task
    if num_classes is None:
        raise ValueError("write_datalist needs a Datalist or num_classes")
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for num_classes={num_classes}")
    folder = target.parent

    dense = task == "segmentation"

    def relative(entry: Mapping[str, Any]) -> dict:
        out = {"image": entry["image"], "label": str(entry["label"]) if dense else int(entry["label"]), "id": str(entry["id"])}
        out.update({k: v for k, v in entry.items() if k not in out})
        for key in ("image", "label") if dense else ("image",):
            path = Path(out[key])
            if path.is_absolute():
                try:
                    out[key] = path.relative_to(folder).as_posix()
                except ValueError:
                    out[key] = str(path)
        return out

    doc: dict[str, Any] = dict(extra or {})
    doc.update({"num_classes": int(num_classes), "class_names": names, "spatial_dims": int(spatial_dims)})
    doc["image_size"] = [int(s) for s in image_size] if image_size is not None else None
    if channels is not None:
        doc["channels"] = int(channels)
    if dense:
        doc["task"] = task
    lists = {"training": training, "test": test, "validation": validation}
    written = False
    for key, items in lists.items():
        if items:
            doc[key] = [relative(item) for item in items]
            written = True
    if not written:
        doc["training"] = []
    return atomic_write_json(target, doc)
