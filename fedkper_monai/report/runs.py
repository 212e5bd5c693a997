"""Read one run's ``metrics.jsonl`` (written by the FLARE server) into header, site rows and round rows.

The file holds one JSON object per line; its fields are listed once, in :mod:`fedkper_monai.metrics_schema`:

- a run header ``{"run": {"algorithm": ..., "seed": ..., "class_names": [...], ...}}`` (first line);
- site lines (keys ``round`` and ``site``): one per site and task (``train`` or ``validate``) per round;
- round lines (key ``round``, no ``site``): one per round, rounds are 0-based.

Reading is tolerant of missing optional fields (absent or ``null``) and of unknown extra fields or
line kinds (the writer may grow), and strict about what would make the numbers wrong: malformed JSON,
a non-object line, a round that is not a non-negative integer or a metric of the wrong type (the
schema's kinds) each raise :class:`~fedkper_monai.errors.DataError` naming the file and the line.

Only the standard library is used here, so loading never pulls in matplotlib.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from fedkper_monai import metrics_schema as schema
from fedkper_monai.errors import DataError
from fedkper_monai.run_files import find_metrics_file

__all__ = ["RunMetrics", "load_run", "load_runs"]

# Kinds checked when a field is present and not null, per line kind (from the schema).
_SITE_KINDS = schema.site_line_kinds()
_ROUND_KINDS = schema.round_line_kinds()


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _kind_error(kind: str, value: Any) -> str | None:
    """What is wrong with ``value`` (not None) for ``kind``; None when it fits."""
    if kind == schema.NUMBER and not _is_number(value):
        return f"expected a number or null, got {value!r}"
    if kind == schema.NUMBER_LIST and (
        not isinstance(value, list) or any(item is not None and not _is_number(item) for item in value)
    ):
        return f"expected a list of numbers or null, got {value!r}"
    if kind == schema.BOOLEAN and not isinstance(value, bool):
        return f"expected true, false or null, got {value!r}"
    return None


@dataclass(frozen=True)
class RunMetrics:
    """Everything one run's ``metrics.jsonl`` says.

    Attributes:
        run_dir: the folder the user named.
        metrics_path: the ``metrics.jsonl`` found in it.
        label: the name this run goes by in tables and plots (the folder name by default).
        header: the ``"run"`` object of the header line (empty when the file has none).
        site_rows: site lines in file order.
        round_rows: round lines sorted by round, one per round (a repeated round keeps its last line,
            as a resumed server re-writes it).
    """

    run_dir: Path
    metrics_path: Path
    label: str
    header: dict[str, Any] = field(default_factory=dict)
    site_rows: list[dict[str, Any]] = field(default_factory=list)
    round_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def algorithm(self) -> str:
        """The algorithm in the header, else the run folder's name."""
        name = self.header.get("algorithm")
        return str(name) if name not in (None, "") else self.run_dir.name

    @property
    def seed(self) -> int | None:
        """The header's seed (``None`` when absent)."""
        return self.header.get("seed")

    @property
    def task(self) -> str:
        """The header's task: ``"segmentation"`` or ``"classification"`` (headers before the field: classification)."""
        return str(self.header.get("task") or "classification")

    @property
    def metric_word(self) -> str:
        """What the run's "accuracy" fields hold: ``"Dice"`` (mean foreground Dice) or ``"accuracy"``."""
        return "Dice" if self.task == "segmentation" else "accuracy"

    @property
    def metric_suffix(self) -> str:
        """Suffix of the site lines' metric fields: ``personalized_dice`` or ``personalized_acc``."""
        return "dice" if self.task == "segmentation" else "acc"

    @property
    def forgetting_class_names(self) -> list[str]:
        """Names of the classes ``global_per_class_forgetting`` lists: every class, or the foreground
        classes ``1..C-1`` of a segmentation run (voxel flips count ground-truth foreground only)."""
        names = self.class_names
        return names[1:] if self.task == "segmentation" and len(names) > self._max_forgetting_length() else names

    @property
    def class_names(self) -> list[str]:
        """Class names from the header; ``class <i>`` for any the header leaves out."""
        names = list(self.header.get("class_names") or [])
        count = max(len(names), int(self.header.get("num_classes") or 0), self._max_forgetting_length())
        return [str(names[i]) if i < len(names) else f"class {i}" for i in range(count)]

    def _max_forgetting_length(self) -> int:
        lengths = [len(row.get("global_per_class_forgetting") or []) for row in self.round_rows]
        return max(lengths, default=0)


def _check_types(path: Path, line_number: int, row: Mapping[str, Any]) -> None:
    where = f"line {line_number}"
    round_index = row.get("round")
    if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
        raise DataError(path, f"'round' must be a non-negative integer, got {round_index!r}", field=f"{where}.round")
    kinds = _SITE_KINDS if "site" in row else _ROUND_KINDS
    for key, kind in kinds.items():
        value = row.get(key)
        problem = None if value is None else _kind_error(kind, value)
        if problem:
            raise DataError(path, problem, field=f"{where}.{key}")


def _default_label(root: Path) -> str:
    """The run folder's name; for ``compare``'s ``RUNS/<algorithm>/seed<k>`` layout, the algorithm's folder."""
    resolved = root.resolve()
    return resolved.parent.name if re.fullmatch(r"seed\d+", resolved.name) else resolved.name


def _parse_line(path: Path, line_number: int, line: str) -> dict[str, Any]:
    """One line as a JSON object; DataError naming the line otherwise."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(path, f"malformed JSON: {error.msg} (column {error.colno})", field=f"line {line_number}") from None
    if not isinstance(row, dict):
        raise DataError(path, f"expected a JSON object, got {type(row).__name__}", field=f"line {line_number}")
    return row


def _check_header(path: Path, line_number: int, run_header: Any, header: dict[str, Any] | None) -> dict[str, Any]:
    """The run's header after this header line (the first one seen is kept)."""
    if not isinstance(run_header, dict):
        raise DataError(path, "the run header must be an object", field=f"line {line_number}.run")
    if header is None:
        return run_header
    if run_header.get("algorithm") != header.get("algorithm"):
        # A resumed server may repeat its header; two algorithms mean two runs in one file.
        raise DataError(path, f"a second run header names algorithm "
                              f"{run_header.get('algorithm')!r} after {header.get('algorithm')!r}",
                        field=f"line {line_number}.run")
    return header


def load_run(run_dir: str | os.PathLike, *, label: str | None = None) -> RunMetrics:
    """Load one run.

    Args:
        run_dir: the run folder, the server's job folder or the ``metrics.jsonl`` file itself
            (:func:`fedkper_monai.run_files.find_metrics_file`: exactly one ``metrics.jsonl``).
        label: the run's name in tables and plots; defaults to the run folder's name (its parent's for a
            ``compare`` folder ``<algorithm>/seed<k>``).

    Returns:
        The run's header, site rows and round rows.

    Raises:
        DataError: no single metrics file, an empty file, malformed JSON, a line that is not an
            object, two headers naming different algorithms, or a field of the wrong type; the message
            names the file and the line number.
    """
    metrics_path = find_metrics_file(run_dir)
    root = Path(run_dir)
    if root.is_file():
        root = root.parent
    header: dict[str, Any] | None = None
    site_rows: list[dict[str, Any]] = []
    rounds: dict[int, dict[str, Any]] = {}
    with metrics_path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = _parse_line(metrics_path, line_number, line)
            if "run" in row:
                header = _check_header(metrics_path, line_number, row["run"], header)
                continue
            if "round" not in row:
                continue  # a line kind this reader does not know: tolerated
            _check_types(metrics_path, line_number, row)
            if "site" in row:
                site_rows.append(row)
            else:
                rounds[row["round"]] = row
    if header is None and not site_rows and not rounds:
        raise DataError(metrics_path, "the metrics file holds no run header and no metrics")
    return RunMetrics(
        run_dir=root,
        metrics_path=metrics_path,
        label=label or _default_label(root),
        header=dict(header or {}),
        site_rows=site_rows,
        round_rows=[rounds[index] for index in sorted(rounds)],
    )


def load_runs(run_dirs: Iterable[str | os.PathLike]) -> list[RunMetrics]:
    """Load several runs and give each a unique label.

    Labels are folder names; where two runs share one (``seed0/fedkper``, ``seed1/fedkper``) the seed
    is appended (``fedkper@seed1``), and a counter where even that is not enough.

    Raises:
        DataError: as :func:`load_run`, or the same metrics file given twice.
    """
    runs = [load_run(run_dir) for run_dir in run_dirs]
    seen: dict[Path, Path] = {}
    for run in runs:
        key = run.metrics_path.resolve()
        if key in seen:
            raise DataError(run.run_dir, f"the same run is given twice (also as {seen[key]})")
        seen[key] = run.run_dir
    names = [run.label for run in runs]
    labels = [
        f"{run.label}@seed{run.seed}" if names.count(run.label) > 1 and run.seed is not None else run.label
        for run in runs
    ]
    unique: list[str] = []
    for label in labels:
        candidate, counter = label, 2
        while candidate in unique:
            candidate, counter = f"{label}#{counter}", counter + 1
        unique.append(candidate)
    return [
        RunMetrics(run.run_dir, run.metrics_path, label, run.header, run.site_rows, run.round_rows)
        for run, label in zip(runs, unique)
    ]
