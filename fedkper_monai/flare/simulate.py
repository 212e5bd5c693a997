"""Run a job of ``jobs/`` in FLARE's simulator with command-line overrides, then summarize its metrics."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from fedkper_monai.errors import FedKPerError
from fedkper_monai.flare.checks import check_job_fields
from fedkper_monai.flare.metrics import METRICS_FILE
from fedkper_monai.flare.jobspec import job_component, load_job, save_job_configs, site_args
from fedkper_monai.flare.process import WatchedRun, run_with_retries
from fedkper_monai.flare.workspace import allow_components

__all__ = ["SimulationOverrides", "RoundProgress", "default_threads", "simulator_command", "job_component", "configure_job", "apply_overrides", "prepare_job", "run_simulator", "simulate", "find_metrics", "read_round_lines", "format_summary"]


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


@dataclass
class SimulationOverrides:
    """Settings a user changes per run without editing the job folder (``None`` keeps the job's value)."""

    rounds: int | None = None
    data_root: str | None = None
    sample_fraction: float | None = None
    local_epochs: int | None = None
    seed: int | None = None
    validate_every: int | None = None


def _network_from_data(source: Path, network: dict, transforms: str) -> dict:
    """The job's network spec with classes, size and input channels taken from prepared data.

    ``source`` is a datalist JSON, or a folder made by ``fedkper-monai prepare`` (its ``site-1.json``).
    """
    from fedkper_monai.data import build_transforms, load_datalist

    first = source / "site-1.json" if source.is_dir() else source
    if not first.exists():
        raise FedKPerError(f"{first}: not found; give a datalist or a folder made by `fedkper-monai prepare`")
    datalist = load_datalist(first)
    updated = dict(network)
    updated["num_classes"] = datalist.num_classes
    updated["spatial_dims"] = datalist.spatial_dims
    if datalist.image_size:
        updated["image_size"] = list(datalist.image_size)
    # The channels a site's pipeline gives: the datalist's conversion (prepare --channels) when it records one.
    settings = {"channels": datalist.channels} if datalist.channels else None
    transform = build_transforms(transforms, image_size=updated.get("image_size"), augment=False, overrides=settings)
    sample = transform(dict(datalist.training[0] if datalist.training else datalist.test[0]))
    updated["in_channels"] = int(sample["image"].shape[0])
    return updated


def configure_job(job: str | Path, overrides: SimulationOverrides, *, network_from: str | Path | None = None) -> tuple[dict, dict, dict]:
    """The three configs of ``job`` with ``overrides`` applied (the job folder is not modified).

    ``overrides.data_root`` is written into the site executor's and evaluator's args (simulation: one machine);
    for real sites leave it unset, so each site reads its own ``$FEDKPER_DATA_ROOT``. Either data root,
    or ``network_from`` (a datalist or a prepared folder), sets the network's classes, size and channels.

    Raises:
        DataError: a field the sites or the server would refuse (:func:`~fedkper_monai.flare.checks.check_job_fields`),
            before anything reads the job.
    """
    meta, server, client = load_job(Path(job))
    check_job_fields(job, server, client)
    return apply_overrides(meta, server, client, overrides, network_from=network_from)


def apply_overrides(meta: dict, server: dict, client: dict, overrides: SimulationOverrides, *,
                    network_from: str | Path | None = None) -> tuple[dict, dict, dict]:
    """A job's three configs with ``overrides`` applied (changed in place and returned); see :func:`configure_job`."""
    controller = server["workflows"][0]["args"]
    learner = site_args(client)
    evaluator = job_component(server, "global_evaluator")["args"]
    persistor = job_component(server, "persistor")["args"]
    if overrides.rounds is not None:
        controller["num_rounds"] = overrides.rounds
    if overrides.sample_fraction is not None:
        controller["sample_fraction"] = overrides.sample_fraction
    if overrides.local_epochs is not None:
        learner["local_epochs"] = overrides.local_epochs
    if overrides.validate_every is not None:
        controller["validate_every"] = overrides.validate_every
    if overrides.seed is not None:
        for args in (controller, learner, persistor):
            args["seed"] = overrides.seed
    if overrides.data_root is not None:
        root = Path(overrides.data_root).resolve()
        for args in (learner, evaluator):
            args["data_root"] = str(root)
            args["demo"] = False
        network_from = network_from or root
    if network_from is not None:
        network = _network_from_data(Path(network_from), learner["network"], learner.get("transforms", "classification_2d"))
        for args in (learner, evaluator, persistor):
            args["network"] = network
    return meta, server, client


def prepare_job(job: str | Path, workspace: str | Path, overrides: SimulationOverrides, job_dir: str | Path) -> Path:
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
    """Run ``nvflare simulator`` in a watched child process (see :mod:`fedkper_monai.flare.process`).

    Its console output is appended to ``log_path`` (None: a temporary file) and shown on this console
    when ``echo`` (default: when there is no ``log_path``).
    A start in which a simulated site could not start is ended at once and redone, up to ``attempts`` starts.
    ``extra_environment`` is added to the simulator's environment (e.g. ``$FEDKPER_RESUME_ROOT``).
    """
    command, environment = simulator_command(job_folder, workspace, n_clients, threads, log_config)
    environment.update(extra_environment or {})
    echo = log_path is None if echo is None else echo

    def retry(result: WatchedRun, attempt: int) -> None:
        print(f"a simulated site could not start ({result.cause}); starting again ({attempt + 1} of {attempts})", flush=True)

    with tempfile.TemporaryDirectory(prefix="fedkper_simlog_") as scratch:
        log = Path(log_path) if log_path is not None else Path(scratch) / "simulator.log"
        return run_with_retries(command, environment, log, attempts=attempts, echo=echo, on_poll=on_poll, on_retry=retry)


def find_metrics(workspace: str | Path) -> Path:
    """The server's ``metrics.jsonl`` inside a simulator workspace."""
    found = sorted(Path(workspace).glob(f"server/**/{METRICS_FILE}"))
    if not found:
        raise FedKPerError(f"{workspace}: no server/**/{METRICS_FILE}; see {workspace}/server/simulate_job/log.txt")
    return found[-1]


def read_round_lines(metrics_path: Path) -> list[dict[str, Any]]:
    """Round lines (those with ``round`` and no ``site``) of a metrics file, in order."""
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [line for line in lines if "round" in line and "site" not in line]


def failed_site_lines(metrics_path: Path) -> list[dict[str, Any]]:
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
    """Prints ``round k of R`` with an estimate of the time left as the server's round lines arrive.

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
            print(f"{self.label}round {done} of {self.rounds} done ({shown}{elapsed:.0f} s; about {left:.0f} s left)", flush=True)
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
    overrides: SimulationOverrides,
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
        controller = load_job(prepared)[1]["workflows"][0]["args"]
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
    for line in failed_site_lines(metrics_path):
        print(f"failed: {line['site']} in round {line['round']} ({line.get('task')}): {line.get('reason')}")
    _report_outputs(metrics_path, workspace)
    if len(rounds) != expected_rounds or result.code != 0:
        return _failure(result, len(rounds), expected_rounds, log)
    return 0
