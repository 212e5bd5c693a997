"""``fedkper-monai report RUN_DIR... --out R``: compare finished runs in one Markdown report with plots."""

from __future__ import annotations

import argparse


__all__ = ["add_report_parser"]

_EXAMPLE = """\
example:
  fedkper-monai report runs/fedkper runs/fedavg runs/fedprox --out reports/retinamnist
  fedkper-monai report runs_seed*/* --out reports/all_seeds --overwrite

Each RUN_DIR is one run: a folder holding exactly one metrics.jsonl at any depth (a FLARE
simulator workspace, whose metrics are in RUN_DIR/server/simulate_job/metrics.jsonl, works as is).
Writes R/report.md, R/summary.csv (one row per run), the PNG plots and, when one algorithm has
several runs (seeds), R/summary_by_algorithm.csv with mean and std per algorithm. Runs with
the same seed are paired: report.md counts the seeds in which the reference algorithm (--reference,
default fedkper) beats each other one.
"""


def add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand to the top-level ``fedkper-monai`` parser."""
    parser = subparsers.add_parser(
        "report",
        help="compare runs: report.md, summary.csv and plots from their metrics.jsonl",
        description="Compare finished runs (one algorithm each) from their metrics.jsonl files: a summary "
                    "table, curves over rounds, the global-vs-personalized trade-off, per-site accuracy and "
                    "per-class forgetting.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run folder (one metrics.jsonl at any depth)")
    parser.add_argument("--out", "-o", required=True, metavar="R", help="the report folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace R if it exists and is not empty")
    parser.add_argument("--reference", metavar="ALG", default=None,
                        help="the algorithm compared seed by seed with every other one (default: fedkper, when "
                             "the runs hold it)")
    parser.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    # Heavy imports (matplotlib) only when the command runs, not when the CLI is built.
    from fedkper_monai.report.writer import write_report

    # An existing --out raises OutputExistsError, a FedKPerError the CLI prints without a traceback.
    report_path = write_report(args.run_dirs, args.out, overwrite=args.overwrite, reference=args.reference)
    files = sorted(path.name for path in report_path.parent.iterdir())
    print(f"wrote {report_path} ({len(args.run_dirs)} run(s)); files in {report_path.parent}: {', '.join(files)}")
    return 0
