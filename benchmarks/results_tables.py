"""Print the tables of ``benchmarks/RESULTS.md`` from a report folder that ``fedkper-monai report`` wrote.

RESULTS.md shows a few of the report's columns, one row per metric and one column per algorithm, mean ± std
over the seeds (``n/a`` where no run reports the value, as best-by-validation for runs written before model
selection), then the seed-by-seed counts (``fedkper_monai.report.paired``) and each run's value of the
metrics the text quotes seed by seed. Everything is read from the report's ``summary.csv`` (one row per run),
so the tables are exactly what the report holds. Run from the repository root:

    python benchmarks/results_tables.py benchmarks/results/brain28 --algorithms fedkper,fedavg,fedntd,ditto

With ``--differences`` it also prints the reference minus each algorithm, seed by seed, marking gaps under
0.005 as ties. Prints Markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedkper_monai.report.metrics import SUMMARY_COLUMNS, summarize_by_algorithm  # noqa: E402
from fedkper_monai.report.paired import PAIRED_METRICS, paired_cell, paired_counts  # noqa: E402

# (summary column, row title): the paper's metrics first (issue 10), then forgetting and the weighting.
ROWS = (
    ("final_global_acc", "final global acc"),
    ("best_val_global_acc", "global acc of the round best on validation (scored on test)"),
    ("late_global_acc", "global acc, mean over the last 20% of rounds"),
    ("best_global_acc", "best global acc (round chosen on test: optimistic)"),
    ("global_acc_stability", "global acc change, last 20% of rounds (lower is steadier)"),
    ("final_mean_personalized_acc", "mean personalized acc"),
    ("final_worst_personalized_acc", "worst site's personalized acc"),
    ("final_balance", "balance, (global + mean personalized) / 2"),
    ("final_mean_unseen_site_acc", "unseen-site acc (held-out sites)"),
    ("final_bwt", "final BwT"),
    ("mean_bwt", "mean BwT, over the rounds that report it"),
    ("mean_global_nfr", "global NFR, mean over rounds 1 onward (round 0 has no previous model)"),
    ("mean_local_nfr", "personalized NFR, mean over site rounds"),
    ("single_site_round_fraction", "single-site rounds"),
)
PER_SEED = ("final_global_acc", "best_val_global_acc", "late_global_acc", "global_acc_stability", "final_worst_personalized_acc",
            "final_mean_unseen_site_acc", "final_bwt", "mean_bwt")
_SIGNED = ("final_bwt", "mean_bwt")


def _number(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def read_summary(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``folder/summary.csv``, numbers as floats and seeds as ints."""
    path = folder / "summary.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `fedkper-monai report ... --out {folder}` first")
    numeric = {column.key for column in SUMMARY_COLUMNS} - {"run", "algorithm", "seed"}
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {key: (_number(value) if key in numeric else value) for key, value in row.items()}
            parsed["seed"] = int(row["seed"]) if row.get("seed") else None
            rows.append(parsed)
    return rows


def _format(key: str, value: float) -> str:
    return f"{value:+.3f}" if key in _SIGNED else f"{value:.3f}"


def _per_seed(key: str, members: list[dict[str, Any]]) -> str:
    """Each run's value, seeds in order, joined by "/"; "-" for a run without it, "n/a" when none has it."""
    if all(row.get(key) is None for row in members):
        return "n/a"
    return "/".join(_format(key, row[key]) if row.get(key) is not None else "-" for row in members)


def _seed_order(row: dict[str, Any]) -> tuple[bool, int]:
    return row["seed"] is None, row["seed"] or 0


def _cell(key: str, group: dict[str, Any]) -> str:
    """Mean ± std of ``key`` from a :func:`summarize_by_algorithm` row (the report's own figures)."""
    mean, std = group[f"{key}_mean"], group[f"{key}_std"]
    if mean is None:
        return "n/a"
    return _format(key, mean) + (f" ± {std:.3f}" if std is not None else "")


def tables(rows: list[dict[str, Any]], algorithms: list[str], reference: str) -> str:
    """The three Markdown tables for ``algorithms`` (in that order)."""
    missing = [name for name in algorithms if not any(row["algorithm"] == name for row in rows)]
    if missing:
        raise SystemExit(f"no runs of {', '.join(missing)} in the report (it has "
                         f"{', '.join(sorted({row['algorithm'] for row in rows}))})")
    runs = {name: [row for row in rows if row["algorithm"] == name] for name in algorithms}
    runs = {name: sorted(members, key=_seed_order) for name, members in runs.items()}
    seeds = {name: [row["seed"] for row in members] for name, members in runs.items()}
    selected = [row for name in algorithms for row in runs[name]]
    groups = {group["algorithm"]: group for group in summarize_by_algorithm(selected)}
    headers = [f"{name} ({len(seeds[name])} seed{'' if len(seeds[name]) == 1 else 's'})" for name in algorithms]
    lines = ["| metric | " + " | ".join(headers) + " |",
             "|---|" + "---|" * len(algorithms)]
    for key, title in ROWS:
        cells = [_cell(key, groups[name]) for name in algorithms]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    counts = sorted(paired_counts(selected, reference), key=lambda item: algorithms.index(item[0]))
    if counts:
        lines += ["", f"Seeds in which {reference} is better, of the seeds both ran:", "",
                  "| against | " + " | ".join(metric.title for metric in PAIRED_METRICS) + " |",
                  "|---|" + "---|" * len(PAIRED_METRICS)]
        lines += [f"| {name} | " + " | ".join(paired_cell(by_metric[metric.key]) for metric in PAIRED_METRICS) + " |"
                  for name, by_metric in counts]
    lines += ["", "Each run, seeds in order (" + ", ".join(f"{name}: {' '.join(map(str, seeds[name]))}"
                                                          for name in algorithms) + "):", "",
              "| metric | " + " | ".join(algorithms) + " |", "|---|" + "---|" * len(algorithms)]
    for key in PER_SEED:
        cells = [_per_seed(key, runs[name]) for name in algorithms]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# A seed-by-seed gap below this is a tie for the text (issue 23: "3 of 3" must not count a 0.002 gap as a win).
CLOSE = 0.005


def differences(rows: list[dict[str, Any]], algorithms: list[str], reference: str) -> str:
    """Per seed, ``reference`` minus each other algorithm for the per-seed metrics; ``~`` marks a gap
    below :data:`CLOSE`. A gap is only a gain where it clears the seed-to-seed spread of an unchanged
    algorithm (run ``--differences --reference fedavg --algorithms fedavg,ditto`` on brain tumor MRI)."""
    by_seed = {name: {row["seed"]: row for row in rows if row["algorithm"] == name} for name in algorithms}
    others = [name for name in algorithms if name != reference]
    lines = ["", f"{reference} minus each algorithm, seed by seed (seeds both ran; ~: closer than {CLOSE}, a tie):", "",
             "| metric | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for key in PER_SEED:
        cells = []
        for name in others:
            seeds = sorted(set(by_seed[reference]) & set(by_seed[name]), key=lambda seed: (seed is None, seed or 0))
            gaps = [(by_seed[reference][seed].get(key), by_seed[name][seed].get(key)) for seed in seeds]
            cells.append("/".join(f"{a - b:+.3f}" + ("~" if abs(a - b) < CLOSE else "") if None not in (a, b) else "-"
                                  for a, b in gaps) or "n/a")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a folder written by `fedkper-monai report` (holding summary.csv)")
    parser.add_argument("--algorithms", required=True, help="comma-separated, in column order")
    parser.add_argument("--reference", default="fedkper", help="the algorithm counted seed by seed against the others")
    parser.add_argument("--differences", action="store_true",
                        help=f"also print the reference minus each algorithm seed by seed (gaps under {CLOSE} marked ~)")
    args = parser.parse_args(argv)
    rows, algorithms = read_summary(args.report), [name for name in args.algorithms.split(",") if name]
    print(tables(rows, algorithms, args.reference))
    if args.differences:
        print(differences(rows, algorithms, args.reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
