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

Planning and resuming live in :mod:`fedkper_monai.experiment.plan`, the partition's datalists and the
pooled federation in :mod:`fedkper_monai.experiment.pooled_data`, the command line in
:mod:`fedkper_monai.experiment.cli`; this module runs the plan.
"""

from __future__ import annotations

import copy
import datetime
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from fedkper_monai.algorithm_registry import Algorithm
from fedkper_monai.errors import FedKPerError
from fedkper_monai.experiment.plan import (
    DONE_FILE,
    STARTED_FILE,
    STOPPED_WORKSPACE,
    CompareRun,
    finished_rounds,
    plan_runs,
)
from fedkper_monai.experiment.pooled_data import pool_sites
from fedkper_monai.flare.jobspec import controller_args, save_job_configs
from fedkper_monai.flare.resume import RESUME_ROOT_ENV, SIMULATOR_JOB_ID, stash_simulator_workspace
from fedkper_monai.io import atomic_write_json
from fedkper_monai.launch.overrides import JobOverrides
from fedkper_monai.launch.simulate import RoundProgress, find_metrics, prepare_job, read_round_lines, run_simulator

__all__ = [
    "DEFAULT_ALGORITHMS",
    "run_compare",
    "format_table",
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
            controller_args(job["server"])["resume"] = SIMULATOR_JOB_ID
        source = save_job_configs(scratch / algorithm.name, job["meta"], job["server"], job["client"])
        prepared = prepare_job(source, run.workspace, JobOverrides(data_root=str(run_data)), run.folder / "job")
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
