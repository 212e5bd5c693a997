"""Run a job of ``jobs/`` in FLARE's simulator with command-line overrides, then summarize its metrics."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from fedkper_monai.errors import DataError, FedKPerError
from fedkper_monai.flare.jobspec import controller_args, load_job, save_job_configs, site_args
from fedkper_monai.flare.workspace import allow_components
from fedkper_monai.launch.overrides import JobOverrides, configure_job
from fedkper_monai.launch.process import EXIT_GRACE_SECONDS, WatchedRun, run_with_retries
from fedkper_monai.run_files import find_metrics_file

__all__ = ["RoundProgress", "default_threads", "simulator_command", "prepare_job", "run_simulator", "simulate", "find_metrics", "read_round_lines", "read_failed_sites", "format_summary"]


# Peak resident memory of one simulated site process, with headroom: 470 MiB measured after a first round of
# the reference CNN on 28x28 images (torch, MONAI and FLARE alone: 250 MiB; benchmarks/bench_memory.py), up to
# ~700 MiB seen in long runs of 20 processes. One process per site is the default while the sites take at most
# this share of the machine's memory: the simulator's server, the command and the user's other work need the rest.
SITE_PROCESS_MIB = 600
ONE_PROCESS_PER_SITE_SHARE = 0.6


def machine_memory_mib() -> int:
    """This machine's physical memory in MiB."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)


def default_threads(n_clients: int, sample_fraction: float, memory_mib: int | None = None) -> int:
    """The simulator's ``-t`` when none is given.

    One process per site while ``n_clients`` site processes take at most 60% of the machine's memory (fastest: with
    fewer threads FLARE starts a fresh process for every site task); else as many as there are sites trained
    per round (at least 2, so a round's trainers run side by side), which bounds memory whatever the number of
    sites. The metrics are the same either way (a site rebuilds itself from its run folder between tasks) at
    the same ``OMP_NUM_THREADS``: :func:`simulator_command` gives each site cores // threads unless it is set.
    """
    memory_mib = machine_memory_mib() if memory_mib is None else memory_mib
    if n_clients * SITE_PROCESS_MIB <= ONE_PROCESS_PER_SITE_SHARE * memory_mib:
        return n_clients
    sampled = math.floor(sample_fraction * n_clients + 1e-9)  # as schedule.sample_sites counts them
    return min(n_clients, max(2, sampled))


def prepare_job(job: str | Path, workspace: str | Path, overrides: JobOverrides, job_dir: str | Path) -> Path:
    """Write ``job`` with ``overrides`` applied under ``job_dir``; allow our package in ``workspace``.

    Returns the folder of the prepared job. The job in ``jobs/`` is never modified. (``job_dir`` lies
    outside the workspace: the simulator empties its workspace, except ``local/`` and ``startup/``.)
    """
    meta, server, client = configure_job(job, overrides)
    learner = site_args(client)
    if learner.get("demo") and not learner.get("data_root"):
        from fedkper_monai.data.demo import ensure_demo_data
        from fedkper_monai.flare.sitedata import default_demo_root

        # Generate once here rather than in racing site processes.
        ensure_demo_data(default_demo_root())
    target = Path(job_dir) / meta.get("name", Path(job).name)
    if target.exists():
        shutil.rmtree(target)
    save_job_configs(target, meta, server, client)
    allow_components(Path(workspace).resolve(), create=True)
    return target


def simulator_command(job_folder: Path, workspace: Path, n_clients: int, threads: int, log_config: str | None = "concise") -> tuple[list[str], dict[str, str]]:
    """The ``nvflare simulator`` command line and its environment."""
    command = [sys.executable, "-m", "nvflare.cli", "simulator", str(job_folder), "-w", str(workspace), "-n", str(n_clients), "-t", str(threads)]
    if log_config:
        command += ["-l", log_config]
    environment = dict(os.environ)
    # Site processes share this machine's cores: without a cap each one starts an OpenMP team as large as
    # the machine, and the teams spin against each other (measured 6-18x slower local training).
    environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, min(threads, n_clients)))))
    return command, environment


def run_simulator(
    job_folder: Path,
    workspace: Path,
    n_clients: int,
    threads: int,
    log_config: str | None = "concise",
    log_path: Path | None = None,
    *,
    echo: bool | None = None,
    on_poll: Callable[[], None] | None = None,
    attempts: int = 3,
    extra_environment: Mapping[str, str] | None = None,
) -> WatchedRun:
    """Run ``nvflare simulator`` in a watched child process (see :mod:`fedkper_monai.launch.process`).

    Its console output is appended to ``log_path`` (None: a temporary file) and shown on this console
    when ``echo`` (default: when there is no ``log_path``).
    A start in which a simulated site could not start is ended at once and redone, up to ``attempts`` starts;
    a simulator that has not exited ``EXIT_GRACE_SECONDS`` after the job finished is ended (said on this console).
    ``extra_environment`` is added to the simulator's environment (e.g. ``$FEDKPER_RESUME_ROOT``).
    """
    command, environment = simulator_command(job_folder, workspace, n_clients, threads, log_config)
    environment.update(extra_environment or {})
    echo = log_path is None if echo is None else echo

    def retry(result: WatchedRun, attempt: int) -> None:
        print(f"a simulated site could not start ({result.cause}); starting again ({attempt + 1} of {attempts})", flush=True)

    with tempfile.TemporaryDirectory(prefix="fedkper_simlog_") as scratch:
        log = Path(log_path) if log_path is not None else Path(scratch) / "simulator.log"
        result = run_with_retries(command, environment, log, attempts=attempts, echo=echo, on_poll=on_poll, on_retry=retry)
    if result.lingered:
        print(f"FLARE's simulator had not exited {EXIT_GRACE_SECONDS:.0f} s after the job finished (it hangs now and then "
              "with fewer site processes than sites); it was ended, the job's outputs are complete", flush=True)
    return result


def find_metrics(workspace: str | Path) -> Path:
    """The server's ``metrics.jsonl`` inside a simulator workspace, by :func:`~fedkper_monai.run_files.find_metrics_file`'s
    rule (exactly one), the error pointing at the server's log where FLARE says why none was written."""
    try:
        return find_metrics_file(Path(workspace) / "server")
    except DataError as error:
        raise DataError(error.path, f"{error.reason}; see {workspace}/server/simulate_job/log.txt") from None


def read_round_lines(metrics_path: Path) -> list[dict[str, Any]]:
    """Round lines (those with ``round`` and no ``site``) of a metrics file, in order."""
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [line for line in lines if "round" in line and "site" not in line]


def read_failed_sites(metrics_path: Path) -> list[dict[str, Any]]:
    """The site lines of a metrics file that record a failed site (``status: failed``), in order."""
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [line for line in lines if "site" in line and line.get("status") == "failed"]


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "  -  "


def format_summary(round_lines: list[dict[str, Any]]) -> str:
    """A fixed-width table of the round lines."""
    header = f"{'round':>5}  {'global':>7}  {'pers.mean':>9}  {'pers.worst':>10}  {'global NFR':>10}  {'BwT':>7}  {'sec':>6}"
    rows = [header]
    for line in round_lines:
        rows.append(
            f"{line['round']:>5}  {_fmt(line.get('global_acc')):>7}  {_fmt(line.get('mean_personalized_acc')):>9}  "
            f"{_fmt(line.get('worst_personalized_acc')):>10}  {_fmt(line.get('global_nfr')):>10}  "
            f"{_fmt(line.get('bwt')):>7}  {line.get('seconds', 0.0):>6.1f}"
        )
    return "\n".join(rows)


class RoundProgress:
    """Prints ``round k done (k+1 of R; ...)`` (``k`` counted from 0, as the table and metrics.jsonl count) with an estimate of the time left as the server's round lines arrive.

    ``label`` starts each line (``compare`` names the run); ``every`` prints only every k-th round (and the last);
    ``metrics``: the file to watch (default: the one :func:`find_metrics` finds in ``workspace``).
    """

    def __init__(self, workspace: Path, rounds: int, label: str = "", every: int = 1, metrics: Path | None = None) -> None:
        self.workspace, self.rounds, self.label, self.every = workspace, rounds, label, max(1, int(every))
        self.metrics = metrics
        self.started = time.monotonic()
        self.shown = 0

    def __call__(self) -> None:
        try:
            lines = read_round_lines(self.metrics or find_metrics(self.workspace))
        except (FedKPerError, OSError, ValueError):
            return  # not written yet, or a line half-written
        for line in lines[self.shown:]:
            done = int(line["round"]) + 1
            if done % self.every and done != self.rounds:
                continue
            elapsed = time.monotonic() - self.started
            left = elapsed / done * (self.rounds - done)
            accuracy = line.get("global_acc")
            shown = f"global acc {accuracy:.3f}, " if isinstance(accuracy, (int, float)) else ""
            # The round as the table and metrics.jsonl number it (from 0), then how many of the run's rounds are done.
            print(f"{self.label}round {line['round']} done ({done} of {self.rounds}; {shown}{elapsed:.0f} s; "
                  f"about {left:.0f} s left)", flush=True)
        self.shown = max(self.shown, len(lines))


def _report_outputs(metrics_path: Path, workspace: Path) -> None:
    print(f"metrics:      {metrics_path}")
    print(f"global model: {metrics_path.parent / 'global_model.pt'}")
    print(f"personalized: {workspace}/site-*/simulate_job/personalized_model.pt")
    print(f"tensorboard:  tensorboard --logdir {metrics_path.parent / 'tb_events'}")


def _failure(result: WatchedRun, found: int, expected: int, log: Path) -> int:
    """Say why a run stopped; the last line is the cause (the first site error), not FLARE's wrapper."""
    print(f"simulation failed: {found} of {expected} rounds (exit code {result.code}); FLARE's output: {log}", file=sys.stderr)
    if result.cause:
        print(("a simulated site could not start: " if result.port_clash else "") + result.cause, file=sys.stderr)
    return result.code if result.code > 0 else 1


def simulate(
    job: str | Path,
    workspace: str | Path,
    n_clients: int,
    threads: int | None,
    overrides: JobOverrides,
    *,
    verbose: bool = False,
) -> int:
    """Prepare, run and summarize one simulation; returns the exit code (nonzero if rounds are missing).

    ``threads`` None: :func:`default_threads` for the job's sample fraction.

    Prints progress and the final table; FLARE's own output goes to ``WORKSPACE/simulator.log`` (and to
    this console as well with ``verbose``).
    """
    workspace = Path(workspace).resolve()
    log = workspace / "simulator.log"
    with tempfile.TemporaryDirectory(prefix="fedkper_job_") as job_dir:
        prepared = prepare_job(job, workspace, overrides, job_dir)
        controller = controller_args(load_job(prepared)[1])
        expected_rounds = controller["num_rounds"]
        if threads is None:
            threads = default_threads(n_clients, float(controller.get("sample_fraction", 1.0)))
        print(f"simulating {Path(job).name}: {n_clients} sites, {expected_rounds} rounds, {threads} site(s) at a time; "
              f"FLARE's output: {log}" + ("" if verbose else " (-v shows it)"), flush=True)
        scratch_log = Path(job_dir) / "simulator.log"
        progress = None if verbose else RoundProgress(workspace, expected_rounds)
        result = run_simulator(prepared, workspace, n_clients, threads, log_path=scratch_log, echo=verbose, on_poll=progress)
        # The simulator empties its workspace when it starts: the log is moved in afterwards.
        workspace.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(scratch_log, log)
    try:
        metrics_path = find_metrics(workspace)
        rounds = read_round_lines(metrics_path)
    except FedKPerError:
        return _failure(result, 0, expected_rounds, log)
    if progress is not None:
        progress()
    print(format_summary(rounds))
    for line in read_failed_sites(metrics_path):
        print(f"failed: {line['site']} in round {line['round']} ({line.get('task')}): {line.get('reason')}")
    _report_outputs(metrics_path, workspace)
    if len(rounds) != expected_rounds or result.code != 0:
        return _failure(result, len(rounds), expected_rounds, log)
    return 0
