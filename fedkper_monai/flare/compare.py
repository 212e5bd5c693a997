"""``fedkper-monai compare``: run several algorithms through FLARE's simulator on one prepared partition.

Every run uses the same data root, the same seed and therefore the same per-round site sampling (the
controller draws it from ``(seed, round)`` only), so the runs differ only in the algorithm (an entry of
:mod:`fedkper_monai.algorithm_registry`). Each run gets its own folder, which ``fedkper-monai report``
reads as it is::

    RUNS/<algorithm>/            (with --seeds: RUNS/<algorithm>/seed<k>/)
        job/<algorithm>/         the prepared job (what the simulator ran)
        workspace/               the simulator workspace (server/simulate_job/metrics.jsonl, site checkpoints)
        simulator.log            the simulator's console output
        started.json             the run's settings, written when it started (a stopped run continues only with them)
        workspace.stopped/       while a stopped run is continued: what it left (flare/resume.py)
        done.json                written atomically after the run finished; holds the run's settings
    RUNS/centralized/data/       the pooled one-site datalist of the centralized upper bound

Planning and resuming live in :mod:`fedkper_monai.flare.compare_plan`, the partition's datalists and the
pooled federation in :mod:`fedkper_monai.flare.compare_data`; this module runs the plan and holds the CLI.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from fedkper_monai.algorithm_registry import ALGORITHMS, Algorithm
from fedkper_monai.errors import FedKPerError
from fedkper_monai.io import atomic_write_json
from fedkper_monai.flare.compare_data import pool_sites, site_datalists
from fedkper_monai.flare.compare_plan import (
    DEFAULT_BASE_JOB,
    DONE_FILE,
    STARTED_FILE,
    STOPPED_WORKSPACE,
    CompareRun,
    algorithm_job,
    finished_rounds,
    parse_algorithms,
    plan_runs,
)
from fedkper_monai.flare.jobspec import save_job_configs
from fedkper_monai.flare.resume import RESUME_ROOT_ENV, SIMULATOR_JOB_ID, stash_simulator_workspace
from fedkper_monai.flare.simulate import RoundProgress, SimulationOverrides, find_metrics, prepare_job, read_round_lines, run_simulator

__all__ = [
    "DONE_FILE",
    "DEFAULT_ALGORITHMS",
    "CompareRun",
    "parse_algorithms",
    "algorithm_job",
    "pool_sites",
    "site_datalists",
    "plan_runs",
    "run_compare",
    "format_table",
    "add_parser",
]

DEFAULT_ALGORITHMS = ("fedkper", "fedavg", "fedprox", "fedntd", "ditto", "local", "centralized")


def _execute(run: CompareRun, data_root: Path, out: Path, threads: int | None, quiet: bool) -> bool:
    """Run one simulation in ``run.folder``, continuing a stopped one from its last completed round when it
    was started with the same settings; write ``done.json`` when all rounds are there."""
    stopped = run.folder / STOPPED_WORKSPACE
    resuming = run.status in ("redo", "resume") and stash_simulator_workspace(run.workspace, stopped)
    if not resuming:
        if run.folder.exists():
            shutil.rmtree(run.folder)  # only our own entries (checked by plan_runs)
        run.folder.mkdir(parents=True)
        atomic_write_json(run.folder / STARTED_FILE, {"settings": run.settings})
    algorithm = run.algorithm
    run_data = data_root
    if algorithm.pooled:
        run_data = pool_sites(data_root, out / algorithm.name / "data")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedkper_compare_") as scratch_name:
        scratch = Path(scratch_name)
        # The planned job already carries every override; only its data root (and a resume) is set here.
        job = copy.deepcopy(run.settings["job"])
        if resuming:
            job["server"]["workflows"][0]["args"]["resume"] = SIMULATOR_JOB_ID
        source = save_job_configs(scratch / algorithm.name, job["meta"], job["server"], job["client"])
        prepared = prepare_job(source, run.workspace, SimulationOverrides(data_root=str(run_data)), run.folder / "job")
    log = run.folder / "simulator.log"
    n_clients = int(run.settings["n_clients"])
    progress = RoundProgress(run.workspace, run.rounds, label=f"{run.label}: ", every=max(1, run.rounds // 10))
    result = run_simulator(
        prepared, run.workspace, n_clients, n_clients if threads is None else max(1, min(threads, n_clients)),
        log_path=log, echo=not quiet, on_poll=progress,
        extra_environment={RESUME_ROOT_ENV: str(stopped)} if resuming else None,
    )
    seconds = time.perf_counter() - started
    found = finished_rounds(run.workspace)
    if found != run.rounds:
        print(f"{run.label}: FAILED (exit code {result.code}, {found} of {run.rounds} rounds); see {log} and "
              f"{run.workspace}/server/log.txt", file=sys.stderr)
        if result.cause:
            print(f"{run.label}: {result.cause}", file=sys.stderr)
        return False
    if stopped.exists():
        shutil.rmtree(stopped)
    atomic_write_json(run.folder / DONE_FILE, {
        "settings": run.settings,
        "metrics": str(find_metrics(run.workspace).relative_to(run.folder)),
        "rounds": found,
        "seconds": round(seconds, 1),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    return True


def run_compare(
    data_root: str | Path,
    algorithms: Sequence[Algorithm],
    out: str | Path,
    *,
    threads: int | None = None,
    quiet: bool = True,
    retries: int = 1,
    **plan_options: Any,
) -> tuple[list[CompareRun], list[CompareRun]]:
    """Plan (see :func:`plan_runs`) and run a comparison, one simulation after another.

    ``plan_options`` are :func:`plan_runs`'s keyword settings (``n_clients``, ``seeds``, ``rounds``, ...).

    Each prepared job names its data root (centralized: ``out/centralized/data``, rebuilt before its run).
    With ``quiet`` the simulator's console output goes to the run's ``simulator.log``. A simulation that
    ends without all its rounds is tried again (from its last completed round) up to ``retries`` times (FLARE's simulator can lose a
    site's result when it runs fewer threads than sites), then counted as failed and the next run starts.

    Returns:
        ``(runs, failed)``: every planned run and those whose simulation did not finish.
    """
    root = Path(data_root).resolve()
    out = Path(out).resolve()
    runs = plan_runs(root, algorithms, out, **plan_options)
    failed: list[CompareRun] = []
    todo = [run for run in runs if run.status != "done"]
    run_seconds: list[float] = []
    for index, run in enumerate(runs, start=1):
        prefix = f"[{index}/{len(runs)}] {run.label}:"
        if run.status == "done":
            print(f"{prefix} finished earlier, skipped ({run.folder})", flush=True)
            continue
        reason = {"redo": " (unfinished run, from scratch)", "resume": " (stopped run, continued from its last completed round)",
                  "overwrite": " (settings changed, overwriting)"}
        print(f"{prefix} running {run.rounds} rounds{reason.get(run.status, '')} -> {run.folder}", flush=True)
        started = time.perf_counter()
        for attempt in range(retries + 1):
            if attempt:
                run.status = "resume"  # a checkpoint of the failed attempt is continued; none: from scratch
                print(f"{prefix} retry {attempt} of {retries}", flush=True)
            if _execute(run, root, out, threads, quiet):
                run_seconds.append(time.perf_counter() - started)
                left = (len(todo) - len(run_seconds) - len(failed)) * sum(run_seconds) / len(run_seconds)
                print(f"{prefix} done in {run_seconds[-1]:.0f} s; {len(todo) - len(run_seconds) - len(failed)} run(s) "
                      f"left, about {left / 60:.0f} min", flush=True)
                break
        else:
            failed.append(run)
    return runs, failed


def _final(run: CompareRun) -> dict[str, Any]:
    lines = read_round_lines(find_metrics(run.workspace)) if run.workspace.exists() else []
    last = lines[-1] if lines else {}
    globals_ = [line["global_acc"] for line in lines if isinstance(line.get("global_acc"), (int, float))]
    return {
        "rounds": len(lines),
        "final_global_acc": last.get("global_acc"),
        "best_global_acc": max(globals_) if globals_ else None,
        "mean_personalized_acc": last.get("mean_personalized_acc"),
        "worst_personalized_acc": last.get("worst_personalized_acc"),
    }


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


_COLUMNS = (("final_global_acc", 8), ("best_global_acc", 8), ("mean_personalized_acc", 9), ("worst_personalized_acc", 10))


def _mean_cell(finals: Sequence[dict[str, Any]], key: str) -> str:
    """``mean±std`` of one column over an algorithm's seeds (``-`` when none has a value)."""
    values = [final[key] for final in finals if isinstance(final.get(key), (int, float))]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f}±{std:.2f}"


def format_table(runs: Sequence[CompareRun], failed: Sequence[CompareRun] = ()) -> str:
    """One row per run (final and best global accuracy, final mean and worst personalized accuracy);
    with several seeds, one mean ± std row per algorithm after them."""
    header = f"{'run':<34} {'rounds':>6} {'global':>8} {'best gl.':>8} {'pers.mean':>9} {'pers.worst':>10}"
    rows = [header, "-" * len(header)]
    by_algorithm: dict[str, list[dict[str, Any]]] = {}
    failed_ids = {id(run) for run in failed}
    for run in runs:
        label = run.label + (" (FAILED)" if id(run) in failed_ids else "")
        try:
            final = _final(run)
        except FedKPerError:
            final = {"rounds": 0}
        rows.append(f"{label:<34} {final['rounds']:>6} " + " ".join(
            f"{_cell(final.get(key)):>{width}}" for key, width in _COLUMNS))
        if id(run) not in failed_ids:
            by_algorithm.setdefault(run.algorithm.name, []).append(final)
    if any(len(finals) > 1 for finals in by_algorithm.values()):
        rows.append("-" * len(header))
        for name, finals in by_algorithm.items():
            cells = " ".join(f"{_mean_cell(finals, key):>{width}}" for key, width in _COLUMNS)
            rows.append(f"{name + f' (mean±std, {len(finals)} seeds)':<34} {'':>6} " + cells)
    return "\n".join(rows)


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
    """Every setting, before a job is built (one line naming the option; see :mod:`~fedkper_monai.flare.checks`)."""
    from fedkper_monai.flare import checks

    checks.check_ranges(rounds=args.rounds, sample_fraction=args.sample_fraction, local_epochs=args.local_epochs,
                        validate_every=args.validate_every)
    checks.check_threads(args.threads)
    if args.retries < 0:
        raise checks.SettingError("--retries", f"must be at least 0, got {args.retries}")
    for seed in _parse_seeds(args.seeds) if args.seeds is not None else []:
        checks.check_ranges(seed=seed)
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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compare`` to the top-level ``fedkper-monai`` parser."""
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
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--sample-fraction", type=float, help="override the share of sites trained per round")
    parser.add_argument("--local-epochs", type=int, help="override local epochs")
    parser.add_argument("--validate-every", type=int,
                        help="rounds between global-on-local validations of all sites (BwT); 0 disables")
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
