"""``fedkper-monai compare``: the command line of the comparison runner (:mod:`fedkper_monai.experiment.compare`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedkper_monai.algorithm_registry import ALGORITHMS
from fedkper_monai.errors import FedKPerError
from fedkper_monai.experiment.compare import DEFAULT_ALGORITHMS, format_table, run_compare
from fedkper_monai.experiment.plan import DEFAULT_BASE_JOB, parse_algorithms
from fedkper_monai.launch.overrides import add_override_options, check_overrides

__all__ = ["add_compare_parser"]


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FedKPerError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise FedKPerError("--seeds is empty")
    return list(dict.fromkeys(seeds))


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _check(args: argparse.Namespace) -> None:
    """Every setting, before a job is built (one line naming the option; see :mod:`~fedkper_monai.launch.checks`)."""
    from fedkper_monai.launch import checks

    check_overrides(args)
    checks.check_threads(args.threads)
    if args.retries < 0:
        raise checks.SettingError("--retries", f"must be at least 0, got {args.retries}")
    for seed in _parse_seeds(args.seeds) if args.seeds is not None else []:
        checks.check_ranges(seed=seed)
    if not Path(args.data_root).is_dir():
        raise checks.SettingError("--data-root", f"{args.data_root}: no such folder (make one with `fedkper-monai prepare`)")
    if args.n_clients is not None:
        checks.check_site_count(args.n_clients, Path(args.data_root))
    from fedkper_monai.flare.jobspec import load_job

    # Every run derives from the base job (only the algorithm's own fields change): what each site and the
    # server would refuse in it stops the comparison now, not a run minutes in.
    checks.check_job_fields(args.base_job, *load_job(args.base_job)[1:])


def _run(args: argparse.Namespace) -> int:
    _check(args)
    algorithms = parse_algorithms(args.algorithms)
    seeds = _parse_seeds(args.seeds) if args.seeds is not None else None
    runs, failed = run_compare(
        args.data_root, algorithms, args.out, n_clients=args.n_clients, threads=args.threads, seeds=seeds,
        rounds=args.rounds, sample_fraction=args.sample_fraction, local_epochs=args.local_epochs,
        validate_every=args.validate_every, base_job=args.base_job, overwrite=args.overwrite, quiet=not args.show_simulator_output,
        retries=args.retries,
    )
    print()
    print(format_table(runs, failed))
    print()
    failed_ids = {id(run) for run in failed}
    folders = " ".join(_shown(run.folder) for run in runs if id(run) not in failed_ids)
    report = _shown(Path(args.out).resolve().with_name(Path(args.out).resolve().name + "_report"))
    if folders:
        print(f"next: fedkper-monai report {folders} --out {report}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(run.label for run in failed)}; rerun the same command "
              "to redo them (finished runs are skipped)", file=sys.stderr)
        return 1
    return 0


_EXAMPLE = """\
example:
  fedkper-monai prepare medmnist --npz ../shared/data/medmnist/retinamnist.npz --sites 20 --alpha 0.1 --seed 0 --out data/retina
  fedkper-monai compare --data-root data/retina --algorithms fedkper,fedavg,fedprox,fedntd,ditto,local,centralized \\
      -n 20 --rounds 50 --seeds 0,1,2 --out runs/retina
  fedkper-monai report runs/retina/*/seed* --out reports/retina

algorithms (the same base job, only these change):
{algorithms}

Each run goes to OUT/<algorithm>/ (with --seeds: OUT/<algorithm>/seed<k>/): the prepared job, the simulator
workspace (metrics.jsonl, checkpoints, TensorBoard), simulator.log and done.json. Rerunning the same command
skips finished runs and continues a stopped one from its last completed round (Ctrl-C is safe).
"""


def add_compare_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compare`` (runs several algorithms on the same partition) to the top-level parser."""
    listing = "\n".join(f"  {algorithm.name:<24} {algorithm.summary()}" for algorithm in ALGORITHMS.values())
    parser = subparsers.add_parser(
        "compare",
        help="run several algorithms on the same partition, seed and site sampling",
        description="Run each algorithm through FLARE's simulator on the same prepared partition with the same "
                    "seed, hence the same per-round site sampling, one after another; then print a table and "
                    "the `fedkper-monai report` command.",
        epilog=_EXAMPLE.format(algorithms=listing),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", required=True, metavar="D", help="folder made by `fedkper-monai prepare`")
    parser.add_argument("--algorithms", default=",".join(DEFAULT_ALGORITHMS),
                        help=f"comma-separated names (default {','.join(DEFAULT_ALGORITHMS)})")
    parser.add_argument("-n", "--n-clients", type=int, help="number of sites (default: the site datalists in D)")
    parser.add_argument("-t", "--threads", type=int, help="sites run in parallel (default: all; with fewer, FLARE's "
                        "simulator restarts site processes between tasks, which is slower)")
    add_override_options(parser, seed=False)
    parser.add_argument("--seeds", metavar="S[,S...]",
                        help="run every algorithm once per seed into OUT/<algorithm>/seed<k> (default: the job's seed)")
    parser.add_argument("--out", required=True, metavar="RUNS", help="comparison folder")
    parser.add_argument("--base-job", default=DEFAULT_BASE_JOB,
                        help=f"job every algorithm derives from (default {DEFAULT_BASE_JOB})")
    parser.add_argument("--overwrite", action="store_true", help="redo finished runs whose settings changed")
    parser.add_argument("--retries", type=int, default=1,
                        help="redo a simulation that ended without all its rounds up to this many times (default 1)")
    parser.add_argument("--show-simulator-output", action="store_true",
                        help="print the simulator's output instead of writing it to each run's simulator.log")
    parser.set_defaults(func=_run)
