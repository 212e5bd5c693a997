"""What ``summary.json`` / ``summary.txt`` of a prepared federation say about each list, for either task.

One summary layout for every importer (:func:`fedkper_monai.data.federation.write_federation` writes it)::

    sites.<name>:       num_train, num_test, train_counts, test_counts (and source_site for a natural partition)
    holdout_sites:      the same for the held-out sites (``--holdout-sites``)
    global_val_counts, global_test_counts

A ``*_counts`` value is, for classification, the number of samples per class (a list of ``num_classes``
ints); for segmentation (``"task": "segmentation"``) the composition of the cases: ``cases``,
``cases_by_dominant_class`` (foreground classes ``1..C-1``) and ``foreground_voxel_share``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from fedkper_monai.data.datalist import class_counts

__all__ = ["split_counts", "format_summary"]

SEGMENTATION = "segmentation"


def split_counts(entries: Sequence[Mapping[str, Any]], num_classes: int, task: str | None = None) -> Any:
    """The ``*_counts`` of one list (see the module docstring)."""
    if task == SEGMENTATION:
        return _composition(entries, num_classes)
    return class_counts(entries, num_classes)


def _composition(entries: Sequence[Mapping[str, Any]], num_classes: int) -> dict[str, Any]:
    """Cases per dominant foreground class and each foreground class's share of the foreground voxels."""
    dominant = [0] * num_classes
    voxels = np.zeros(num_classes, dtype=np.int64)
    for entry in entries:
        counts = np.asarray(entry["class_voxels"], dtype=np.int64)
        dominant[int(np.argmax(counts[1:])) + 1] += 1
        voxels += counts
    foreground = voxels[1:].sum()
    shares = [round(float(v / foreground), 4) if foreground else 0.0 for v in voxels[1:]]
    return {"cases": len(entries), "cases_by_dominant_class": dominant[1:], "foreground_voxel_share": shares}


def format_summary(summary: Mapping[str, Any]) -> str:
    """The readable ``summary.txt`` of a summary of either task."""
    if summary.get("task") == SEGMENTATION:
        return _format_segmentation(summary)
    return _format_classification(summary)


def _format_classification(summary: Mapping[str, Any]) -> str:
    """Per-site class-count table: training count per class, local test count in brackets."""
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


def _format_segmentation(summary: Mapping[str, Any]) -> str:
    """Per-site table: cases (local test), cases by dominant class, foreground voxel shares."""
    names = summary["class_names"][1:]
    lines = [
        f"source: {summary['source']}",
        f"task: segmentation  partition: {summary['partition']}  alpha: {summary['alpha']}  seed: {summary['seed']}  "
        f"sites: {summary['num_sites']}  classes: {', '.join(summary['class_names'])}  patch: {summary['image_size']}  "
        f"largest case: {summary['max_case_size']}",
        f"per site: training cases (local test), training cases by dominant class [{', '.join(names)}], "
        "foreground voxel share per class",
    ]
    groups = {**summary["sites"], **summary.get("holdout_sites", {})}
    groups.update({"global_val": {"train_counts": summary["global_val_counts"]},
                   "global_test": {"train_counts": summary["global_test_counts"]}})
    for name, site in groups.items():
        counts = site["train_counts"]
        cases = f"{site['num_train']} ({site['num_test']})" if "num_train" in site else str(counts["cases"])
        lines.append(f"{name:<14}{cases:>10}  {counts['cases_by_dominant_class']}  {counts['foreground_voxel_share']}")
    return "\n".join(lines) + "\n"
