"""Write the comparison report of several runs: ``report.md``, ``summary.csv`` and the PNG plots.

Every run is loaded and checked before anything is written; the output folder is then built in a
temporary sibling and moved into place at the end (:func:`fedkper_monai.io.atomic_directory`), so a
failed report leaves no partial folder behind.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from fedkper_monai.errors import FedKPerError
from fedkper_monai.io import atomic_directory, atomic_write_bytes, atomic_write_text
from fedkper_monai.report.metrics import (
    SUMMARY_COLUMNS,
    column_meaning,
    column_title,
    for_metric,
    metric_word,
    sampling_mismatches,
    summarize,
    summarize_by_algorithm,
)
from fedkper_monai.report.paired import PAIRED_METRICS, paired_cell, paired_counts
from fedkper_monai.report.runs import RunMetrics, load_runs

__all__ = ["write_report", "summary_csv_text", "format_value", "report_markdown", "setting_notes"]

# Header fields that must agree for runs to be comparable; a difference is named in the report.
_COMPARABLE_SETTINGS = ("num_sites", "sample_fraction", "num_classes", "class_names", "network", "num_rounds")


def format_value(value: Any, number_format: str) -> str:
    """A summary value for the Markdown table: ``n/a`` when missing, MB for byte counts."""
    if value is None:
        return "n/a"
    if not number_format or isinstance(value, str):
        return str(value)
    if number_format == "MB":
        return f"{value / 1e6:.3g}"
    if number_format == "d":
        return str(int(value))
    return format(value, number_format)


def summary_csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV with one header line and one line per row; missing values are empty cells, floats at full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(column) is None else row.get(column) for column in columns])
    return buffer.getvalue()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(title) for title in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def setting_notes(runs: Sequence[RunMetrics]) -> list[str]:
    """Human-readable warnings about runs that are not comparable or not complete."""
    notes = []
    for key in _COMPARABLE_SETTINGS:
        values = {run.label: run.header.get(key) for run in runs if run.header.get(key) is not None}
        if len({repr(value) for value in values.values()}) > 1:
            listed = ", ".join(f"{label}={value}" for label, value in values.items())
            notes.append(f"The runs differ in `{key}` ({listed}): compare them with care.")
    mixed_tasks = len({run.task for run in runs}) > 1  # an all-segmentation report says Dice throughout
    for run in runs:
        if mixed_tasks and run.task == "segmentation":
            # Segmentation runs keep the round fields' names (metrics_schema.OPTIONAL_HEADER_FIELDS).
            notes.append(f"{run.label} is a segmentation run: its accuracies in this report are mean foreground Dice.")
        planned = run.header.get("num_rounds")
        if isinstance(planned, int) and len(run.round_rows) < planned:
            notes.append(f"{run.label} has {len(run.round_rows)} of its {planned} rounds: unfinished or crashed.")
        if not any(row.get("global_acc") is not None for row in run.round_rows):
            notes.append(f"{run.label} reports no global accuracy (no global test set configured).")
    notes += [f"Site sampling differs at the same seed: {message}." for message in sampling_mismatches(runs)]
    return notes


def _algorithm_table(by_algorithm: Sequence[Mapping[str, Any]], word: str = "accuracy") -> list[str]:
    columns = [column for column in SUMMARY_COLUMNS if column.key not in ("run", "algorithm", "seed")]
    header = ["algorithm", "runs (seeds)"] + [column_title(column, word) for column in columns]
    rows = []
    for group in by_algorithm:
        cells = [str(group["algorithm"]), f"{group['runs']} ({group['seeds']})" if group["seeds"] else str(group["runs"])]
        for column in columns:
            mean, std = group[f"{column.key}_mean"], group[f"{column.key}_std"]
            number_format = ".3g" if column.number_format == "d" else column.number_format
            text = format_value(mean, number_format)
            if std is not None:
                # The spread is never signed, even where the mean is.
                text += " ± " + format_value(std, number_format.replace("+", ""))
            cells.append(text)
        rows.append(cells)
    return _table(header, rows)


def _paired_section(summaries: Sequence[Mapping[str, Any]], reference: str, word: str) -> list[str]:
    counts = paired_counts(summaries, reference)
    if not counts:
        return []
    lines = ["", f"## {reference} against each algorithm, seed by seed", "",
             f"Runs with the same seed share the partition, the initial model and the sites sampled each round. "
             f"A cell counts the seeds in which {reference} was better (of the seeds where both runs report the "
             "metric; equal values are ties). Lower is better for the global model's round-to-round change and NFR.",
             ""]
    rows = [[algorithm] + [paired_cell(by_metric[metric.key]) for metric in PAIRED_METRICS]
            for algorithm, by_metric in counts]
    return lines + _table(["against"] + [for_metric(metric.title, word) for metric in PAIRED_METRICS], rows)


def report_markdown(runs: Sequence[RunMetrics], summaries: Sequence[Mapping[str, Any]],
                    by_algorithm: Sequence[Mapping[str, Any]] | None,
                    plots: Sequence[tuple[str, str]], *, reference: str = "fedkper") -> str:
    """The text of ``report.md``.

    Args:
        runs: the loaded runs.
        summaries: :func:`~fedkper_monai.report.metrics.summarize` of each run.
        by_algorithm: per-algorithm mean ± std rows, or ``None`` when no algorithm has several runs.
        plots: ``(file_name, title)`` of each PNG, embedded by relative path.
        reference: the algorithm compared seed by seed with every other one (a section only when some
            other algorithm shares a seed with it).
    """
    # Segmentation runs keep the accuracy field names but hold mean foreground Dice: say what they hold.
    word = metric_word(runs)
    lines = ["# Federated learning comparison report", "",
             f"{len(runs)} run(s), made by `fedkper-monai report`. Rounds are 0-based; "
             + for_metric("accuracies are fractions in [0, 1]", word) + "; `n/a` means the run does not report the value.", ""]
    if word == "Dice":
        lines += ["Segmentation runs: every accuracy field of `metrics.jsonl` (and of `summary.csv`, whose column keys keep "
                  "the `acc` names) holds the mean foreground Dice (MONAI `DiceMetric`, background excluded), and flips "
                  "count ground-truth foreground voxels.", ""]
    lines += ["## Runs", ""]
    lines += _table(
        ["run", "algorithm", "seed", "job", "network", "sites", "sampled fraction", "rounds (planned)", "metrics file"],
        [[run.label, run.algorithm, format_value(run.seed, ""), format_value(run.header.get("job"), ""),
          format_value(run.header.get("network"), ""), format_value(run.header.get("num_sites"), ""),
          format_value(run.header.get("sample_fraction"), ""),
          f"{len(run.round_rows)} ({format_value(run.header.get('num_rounds'), '')})", f"`{run.metrics_path}`"]
         for run in runs],
    )
    lines += ["", "## Summary (one row per run; also in `summary.csv`)", "",
              for_metric("Three global accuracies per run, each on the global test set: **final** (the last round's "
                         "model), **best-by-val** (the model of the round with the highest validation accuracy, as a "
                         "user who selects on validation keeps it; n/a for runs without a validation list) and **late** "
                         "(the mean over the last 20% of rounds). **best global acc** picks the round on the test set "
                         "itself: an optimistic bound, not a selectable model.", word), ""]
    lines += _table([column_title(column, word) for column in SUMMARY_COLUMNS],
                    [[format_value(summary.get(column.key), column.number_format) for column in SUMMARY_COLUMNS]
                     for summary in summaries])
    if by_algorithm is not None:
        lines += ["", "## Mean ± std per algorithm over its runs (also in `summary_by_algorithm.csv`)", "",
                  "Sample standard deviation (n - 1); a value without ± comes from one run.", ""]
        lines += _algorithm_table(by_algorithm, word)
    lines += _paired_section(summaries, reference, word)
    notes = setting_notes(runs)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines += ["", "## Plots", ""]
    for file_name, title in plots:
        lines += [f"### {title}", "", f"![{title}]({file_name})", ""]
    lines += ["## What each metric means", ""]
    lines += [f"- **{column_title(column, word)}** (`{column.key}`): {column_meaning(column, word)}." for column in SUMMARY_COLUMNS]
    unit = "ground-truth foreground voxels" if word == "Dice" else "samples"
    lines += [
        for_metric("- **personalized accuracy**: each site's own model, trained locally from the global model, on that "
                   "site's local test split.", word),
        for_metric("- **global-on-local accuracy**: the global model on a site's local test split (every site, sampled or not).", word),
        f"- **NFR (negative flip rate)**: share of {unit} a model role got right at its previous evaluation on "
        "the same set and gets wrong now; **per-class forgetting** is the same within one class.",
        "",
    ]
    return "\n".join(lines)


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False,
                 reference: str | None = None) -> Path:
    """Compare runs: write ``out/report.md``, ``out/summary.csv`` and the PNG plots.

    With several runs of one algorithm (different seeds), also mean ± std rows per algorithm in
    ``report.md`` and ``out/summary_by_algorithm.csv``.

    Args:
        run_dirs: run folders (each holding one ``metrics.jsonl`` at any depth) or the files themselves.
        out: the report folder, created (or replaced with ``overwrite``) as a whole.
        overwrite: replace a non-empty ``out``.
        reference: the algorithm compared seed by seed with every other one in ``report.md``; ``None``
            compares ``fedkper`` where the runs hold it.

    Returns:
        The path of ``report.md``.

    Raises:
        DataError: a run folder without exactly one metrics file, or a malformed metrics file.
        FileExistsError: ``out`` exists, is not empty, and ``overwrite`` is False.
        FedKPerError: ``reference`` names no algorithm of the runs.
    """
    if not run_dirs:
        raise ValueError("write_report needs at least one run folder")
    runs = load_runs(run_dirs)
    if reference is not None and reference not in {run.algorithm for run in runs}:
        raise FedKPerError(f"--reference {reference!r} names no algorithm of the runs "
                           f"({', '.join(sorted({run.algorithm for run in runs}))})")
    summaries = [summarize(run) for run in runs]
    groups = summarize_by_algorithm(summaries)
    by_algorithm = groups if any(group["runs"] > 1 for group in groups) else None
    # Imported here so loading and summarizing work without matplotlib (and the CLI starts fast).
    from fedkper_monai.report.plots import render_plots

    plots = render_plots(runs)
    target = Path(out)
    with atomic_directory(target, overwrite=overwrite) as staging:
        for file_name, _, png in plots:
            atomic_write_bytes(staging / file_name, png)
        atomic_write_text(staging / "summary.csv",
                          summary_csv_text(summaries, [column.key for column in SUMMARY_COLUMNS]))
        if by_algorithm is not None:
            columns = list(by_algorithm[0])
            atomic_write_text(staging / "summary_by_algorithm.csv", summary_csv_text(by_algorithm, columns))
        atomic_write_text(staging / "report.md",
                          report_markdown(runs, summaries, by_algorithm, [(name, title) for name, title, _ in plots],
                                          reference=reference or "fedkper"))
    return target / "report.md"
