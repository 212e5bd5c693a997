"""Read one run's ``metrics.jsonl`` (written by the FLARE server) and reduce it to comparable numbers.

The file holds one JSON object per line (schema: issue 4 / DESIGN section 2):

- a run header ``{"run": {"algorithm": ..., "seed": ..., "class_names": [...], ...}}`` (first line);
- site lines (keys ``round`` and ``site``): one per site and task (``train`` or ``validate``) per round;
- round lines (key ``round``, no ``site``): one per round, rounds are 0-based.

Reading is tolerant of missing optional fields (absent or ``null``) and of unknown extra fields or
line kinds (the writer may grow), and strict about what would make the numbers wrong: malformed JSON,
a non-object line, a round that is not a non-negative integer or a metric of the wrong type each raise
:class:`~fedkper_monai.errors.DataError` naming the file and the line.

Only the standard library is used here, so loading and summarizing never pulls in matplotlib.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fedkper_monai.errors import DataError

__all__ = [
    "METRICS_FILE_NAME",
    "SUMMARY_COLUMNS",
    "SummaryColumn",
    "RunMetrics",
    "find_metrics_file",
    "load_run",
    "load_runs",
    "summarize",
    "summarize_by_algorithm",
    "round_series",
    "final_site_accuracies",
    "mean_per_class_forgetting",
    "sampling_mismatches",
    "site_sort_key",
]

METRICS_FILE_NAME = "metrics.jsonl"

# Fields checked for type when present and not null: a string where a number belongs would silently
# turn into a wrong mean, so it is an error naming the line.
_NUMBER_FIELDS = (
    "personalized_acc", "personalized_balanced_acc", "global_on_local_acc", "nfr_personalized",
    "nfr_global_on_local", "train_acc", "score", "weight", "num_samples", "local_test_size",
    "train_seconds", "bytes_received", "global_acc", "global_balanced_acc", "global_nfr", "bwt",
    "mean_personalized_acc", "worst_personalized_acc", "balanced_personalized_acc",
    "mean_nfr_personalized", "mean_nfr_global_on_local", "seconds", "bytes_sent",
)
_NUMBER_LIST_FIELDS = ("per_class_forgetting_personalized", "global_per_class_forgetting")


@dataclass(frozen=True)
class SummaryColumn:
    """One column of the summary: its key (CSV header), a short title, a number format and a meaning."""

    key: str
    title: str
    number_format: str
    meaning: str


# The single source of truth for summary.csv's columns, the report table and the metric explanations.
SUMMARY_COLUMNS: tuple[SummaryColumn, ...] = (
    SummaryColumn("run", "run", "", "the run's folder name (with its seed when two runs share a name)"),
    SummaryColumn("algorithm", "algorithm", "", "the algorithm named in the run header (else the folder name)"),
    SummaryColumn("seed", "seed", "", "the seed in the run header: partition, site sampling and initialization"),
    SummaryColumn("rounds", "rounds", "d", "number of rounds with a round line in metrics.jsonl"),
    SummaryColumn("final_global_acc", "final global acc", ".3f",
                  "accuracy of the global model on the global test set after the last round"),
    SummaryColumn("best_global_acc", "best global acc", ".3f",
                  "highest global-model accuracy on the global test set over all rounds"),
    SummaryColumn("final_mean_personalized_acc", "mean pers. acc", ".3f",
                  "last round: mean over sites of each site's personalized (local) model accuracy on its local test split"),
    SummaryColumn("final_worst_personalized_acc", "worst pers. acc", ".3f",
                  "last round: personalized accuracy of the worst site"),
    SummaryColumn("final_balanced_personalized_acc", "bal. pers. acc", ".3f",
                  "last round: class-balanced personalized accuracy (mean of per-class recalls), averaged over sites"),
    SummaryColumn("mean_global_nfr", "global NFR", ".4f",
                  "negative flip rate of the global model on the global test set (share of samples right at the "
                  "previous round and wrong now), mean over rounds after the first"),
    SummaryColumn("mean_local_nfr", "local NFR", ".4f",
                  "negative flip rate of each site's personalized model on its local test split since its previous "
                  "evaluation, mean over all site train lines"),
    SummaryColumn("final_bwt", "final BwT", "+.4f",
                  "backward transfer after the last round: mean over previously sampled sites of global-on-local "
                  "accuracy now minus right after the round they were last sampled (negative = forgetting)"),
    SummaryColumn("mean_bwt", "mean BwT", "+.4f", "backward transfer, mean over the rounds that report it"),
    SummaryColumn("seconds_per_round", "s/round", ".1f", "wall time per round, mean over rounds (seconds)"),
    SummaryColumn("bytes_sent_per_round", "MB sent/round", "MB",
                  "bytes the server sent to sites per round, mean over rounds (shown in MB = 1e6 bytes)"),
    SummaryColumn("single_site_round_fraction", "single-site rounds", ".2f",
                  "share of rounds in which one site effectively carried the whole aggregate"),
)


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
    def class_names(self) -> list[str]:
        """Class names from the header; ``class <i>`` for any the header leaves out."""
        names = list(self.header.get("class_names") or [])
        count = max(len(names), int(self.header.get("num_classes") or 0), self._max_forgetting_length())
        return [str(names[i]) if i < len(names) else f"class {i}" for i in range(count)]

    def _max_forgetting_length(self) -> int:
        lengths = [len(row.get("global_per_class_forgetting") or []) for row in self.round_rows]
        return max(lengths, default=0)


def find_metrics_file(run_dir: str | os.PathLike) -> Path:
    """Find the one ``metrics.jsonl`` at or anywhere below ``run_dir``.

    FLARE workspaces nest it (``RUN_DIR/server/simulate_job/app_server/metrics.jsonl``), so the search
    is recursive. ``run_dir`` may also be the ``metrics.jsonl`` file itself.

    Raises:
        DataError: ``run_dir`` does not exist, holds no ``metrics.jsonl``, or holds several.
    """
    root = Path(run_dir)
    if root.is_file():
        if root.name == METRICS_FILE_NAME:
            return root
        raise DataError(root, f"expected a run folder or a {METRICS_FILE_NAME} file")
    if not root.is_dir():
        raise DataError(root, "run folder not found")
    found = sorted(path for path in root.rglob(METRICS_FILE_NAME) if path.is_file())
    if not found:
        raise DataError(root, f"no {METRICS_FILE_NAME} found in this run folder or below it "
                              "(is it a finished FLARE run folder?)")
    if len(found) > 1:
        listed = ", ".join(str(path.relative_to(root)) for path in found)
        raise DataError(root, f"{len(found)} {METRICS_FILE_NAME} files found below it ({listed}); "
                              "pass each run's own folder")
    return found[0]


def _check_types(path: Path, line_number: int, row: Mapping[str, Any]) -> None:
    where = f"line {line_number}"
    round_index = row.get("round")
    if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
        raise DataError(path, f"'round' must be a non-negative integer, got {round_index!r}", field=f"{where}.round")
    for key in _NUMBER_FIELDS:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(path, f"expected a number or null, got {value!r}", field=f"{where}.{key}")
    for key in _NUMBER_LIST_FIELDS:
        value = row.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or any(
            item is not None and (isinstance(item, bool) or not isinstance(item, (int, float))) for item in value
        ):
            raise DataError(path, f"expected a list of numbers or null, got {value!r}", field=f"{where}.{key}")
    single = row.get("single_site_round")
    if single is not None and not isinstance(single, bool):
        raise DataError(path, f"expected true, false or null, got {single!r}", field=f"{where}.single_site_round")


def _default_label(root: Path) -> str:
    """The run folder's name; for ``compare``'s ``RUNS/<algorithm>/seed<k>`` layout, the algorithm's folder."""
    resolved = root.resolve()
    return resolved.parent.name if re.fullmatch(r"seed\d+", resolved.name) else resolved.name


def load_run(run_dir: str | os.PathLike, *, label: str | None = None) -> RunMetrics:
    """Load one run.

    Args:
        run_dir: the run folder (searched recursively for ``metrics.jsonl``) or the file itself.
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
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(metrics_path, f"malformed JSON: {error.msg} (column {error.colno})",
                                field=f"line {line_number}") from None
            if not isinstance(row, dict):
                raise DataError(metrics_path, f"expected a JSON object, got {type(row).__name__}",
                                field=f"line {line_number}")
            if "run" in row:
                run_header = row["run"]
                if not isinstance(run_header, dict):
                    raise DataError(metrics_path, "the run header must be an object", field=f"line {line_number}.run")
                if header is None:
                    header = run_header
                elif run_header.get("algorithm") != header.get("algorithm"):
                    # A resumed server may repeat its header; two algorithms mean two runs in one file.
                    raise DataError(metrics_path, f"a second run header names algorithm "
                                                  f"{run_header.get('algorithm')!r} after {header.get('algorithm')!r}",
                                    field=f"line {line_number}.run")
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


def _numbers(values: Iterable[Any]) -> list[float]:
    """The finite numbers among ``values`` (``None`` and NaN dropped)."""
    return [float(value) for value in values if value is not None and math.isfinite(float(value))]


def _mean(values: Iterable[Any]) -> float | None:
    numbers = _numbers(values)
    return statistics.fmean(numbers) if numbers else None


def _is_train(row: Mapping[str, Any]) -> bool:
    # Site lines without a task predate the field; they carry training metrics.
    return row.get("task", "train") == "train"


def summarize(run: RunMetrics) -> dict[str, Any]:
    """Reduce a run to one row with the keys of :data:`SUMMARY_COLUMNS` (``None`` where unknown).

    Final values come from the last round line; "global NFR" averages the rounds after the first
    (the first has no previous evaluation, so nothing can flip); "local NFR" averages
    ``nfr_personalized`` over all site train lines.
    """
    rows = run.round_rows
    last = rows[-1] if rows else {}
    after_first = rows[1:]
    global_accs = _numbers(row.get("global_acc") for row in rows)
    single_site = [row["single_site_round"] for row in rows if row.get("single_site_round") is not None]
    return {
        "run": run.label,
        "algorithm": run.algorithm,
        "seed": run.seed,
        "rounds": len(rows),
        "final_global_acc": last.get("global_acc"),
        "best_global_acc": max(global_accs) if global_accs else None,
        "final_mean_personalized_acc": last.get("mean_personalized_acc"),
        "final_worst_personalized_acc": last.get("worst_personalized_acc"),
        "final_balanced_personalized_acc": last.get("balanced_personalized_acc"),
        "mean_global_nfr": _mean(row.get("global_nfr") for row in after_first),
        "mean_local_nfr": _mean(row.get("nfr_personalized") for row in run.site_rows if _is_train(row)),
        "final_bwt": last.get("bwt"),
        "mean_bwt": _mean(row.get("bwt") for row in rows),
        "seconds_per_round": _mean(row.get("seconds") for row in rows),
        "bytes_sent_per_round": _mean(row.get("bytes_sent") for row in rows),
        "single_site_round_fraction": (sum(single_site) / len(single_site)) if single_site else None,
    }


_GROUP_KEYS = ("run", "algorithm", "seed")


def summarize_by_algorithm(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (n - 1) of every numeric summary column per algorithm.

    Args:
        summaries: rows from :func:`summarize`.

    Returns:
        One row per algorithm, in first-appearance order: ``algorithm``, ``runs`` (count), ``seeds``
        (space-separated), then ``<key>_mean`` and ``<key>_std`` for each numeric column. The std is
        ``None`` with fewer than two values; both are ``None`` when no run reports the value.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for summary in summaries:
        groups.setdefault(str(summary["algorithm"]), []).append(summary)
    result = []
    for algorithm, members in groups.items():
        row: dict[str, Any] = {
            "algorithm": algorithm,
            "runs": len(members),
            "seeds": " ".join(str(member["seed"]) for member in members if member.get("seed") is not None),
        }
        for column in SUMMARY_COLUMNS:
            if column.key in _GROUP_KEYS:
                continue
            values = _numbers(member.get(column.key) for member in members)
            row[f"{column.key}_mean"] = statistics.fmean(values) if values else None
            row[f"{column.key}_std"] = statistics.stdev(values) if len(values) >= 2 else None
        result.append(row)
    return result


def round_series(run: RunMetrics, key: str) -> tuple[list[int], list[float]]:
    """A round-line field over rounds: ``(rounds, values)`` with NaN where the value is missing."""
    rounds = [row["round"] for row in run.round_rows]
    values = [float(row[key]) if row.get(key) is not None else math.nan for row in run.round_rows]
    return rounds, values


def site_sort_key(site: str) -> tuple:
    """Sort ``site-2`` before ``site-10``: digit runs compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", site) if part)


def final_site_accuracies(run: RunMetrics) -> dict[str, tuple[float | None, float | None]]:
    """Per site: ``(personalized_acc, global_on_local_acc)`` as last reported.

    Personalized accuracy comes from the site's latest train line (``None`` if it was never sampled);
    global-on-local accuracy from its latest line of either task, so unsampled sites count too.
    Sites are in natural order.
    """
    latest: dict[str, dict[str, tuple[int, float]]] = {}
    for row in run.site_rows:
        site = str(row["site"])
        entry = latest.setdefault(site, {})
        for key, wanted in (("personalized_acc", _is_train(row)), ("global_on_local_acc", True)):
            value = row.get(key)
            # ">=" keeps the later line of the same round: file order is time order.
            if wanted and value is not None and row["round"] >= entry.get(key, (-1, 0.0))[0]:
                entry[key] = (row["round"], float(value))
    return {
        site: (
            latest[site]["personalized_acc"][1] if "personalized_acc" in latest[site] else None,
            latest[site]["global_on_local_acc"][1] if "global_on_local_acc" in latest[site] else None,
        )
        for site in sorted(latest, key=site_sort_key)
    }


def mean_per_class_forgetting(run: RunMetrics) -> list[float]:
    """Mean over rounds after the first of ``global_per_class_forgetting``, one value per class.

    NaN for a class no round reports. The length is the number of class names of the run.
    """
    num_classes = len(run.class_names)
    columns: list[list[Any]] = [[] for _ in range(num_classes)]
    for row in run.round_rows[1:]:
        for index, value in enumerate(row.get("global_per_class_forgetting") or []):
            columns[index].append(value)
    means = [_mean(column) for column in columns]
    return [math.nan if value is None else value for value in means]


def sampling_mismatches(runs: Sequence[RunMetrics]) -> list[str]:
    """Check that runs with the same seed sampled the same sites in every round they share.

    The comparison is only fair when every algorithm saw the same site sampling (issue 5).

    Returns:
        One human-readable line per disagreement (empty when all agree or nothing is comparable).
    """
    messages = []
    by_seed: dict[Any, list[RunMetrics]] = {}
    for run in runs:
        if run.seed is not None:
            # Only runs over the same sites are comparable (the centralized run pools them into one).
            sites = tuple(run.header.get("sites") or ())
            by_seed.setdefault((run.seed, sites), []).append(run)
    for (seed, _), members in by_seed.items():
        reference = members[0]
        reference_sampling = {row["round"]: row.get("sampled_sites") for row in reference.round_rows}
        for other in members[1:]:
            for row in other.round_rows:
                theirs, ours = row.get("sampled_sites"), reference_sampling.get(row["round"])
                if theirs is None or ours is None:
                    continue
                if sorted(map(str, theirs)) != sorted(map(str, ours)):
                    messages.append(
                        f"seed {seed}, round {row['round']}: {reference.label} sampled {sorted(map(str, ours))} "
                        f"but {other.label} sampled {sorted(map(str, theirs))}"
                    )
                    break  # one line per pair of runs is enough to flag it
    return messages
