"""Peak memory of simulated sites: one site process, and a large federation in FLARE's simulator.

FLARE's simulator runs each simulated site in its own process. With ``-t`` equal to the number of sites every
site process lives for the whole run; with fewer threads than sites the simulator starts a fresh process for
each site turn (nvflare ``SimulatorClientRunner.do_one_task``) and the site rebuilds itself from its run folder
(``tests/system/test_threads.py`` checks that the metrics are the same). So memory grows with ``-t``, not with
the number of sites. Two parts, on real data (``fedkper-monai prepare medmnist`` of
``../shared/data/brain_tumor_mri/brain_tumor_mri_28.npz`` into ``--sites`` sites, Dirichlet(``--alpha``),
seed 0, in a temporary folder):

1. ``site_process``: one site process as FLARE starts it, measured in a fresh child process by its peak
   resident set (``VmHWM``): after Python alone, after the imports a site worker makes (FLARE's simulator
   worker, the job's client components, our executor), after the site's setup (``Site``: datalist, MONAI
   datasets, networks, the first optimizer) and after its first train round (the job's settings: reference CNN,
   5 local epochs) on the largest site.
2. ``federation``: ``fedkper-monai simulate jobs/fedkper_medmnist -n SITES --rounds R`` (10% of the sites
   trained per round, every site validated every round, global evaluation), run as a user runs it, with ``-t
   --threads`` or simulate's own default. A thread samples the whole process tree under this benchmark (the
   command, FLARE's simulator and server, the site processes) every ``--interval`` seconds with psutil: the sum
   of resident sets (an upper bound: shared library pages count once per process) and of proportional set
   sizes (shared pages split between the processes that map them: what the tree really takes), the number of
   site processes, the largest site process and the rest of the tree. One process per site (``-t`` = sites) is
   estimated as the rest's peak plus the sites times the largest site process: at 50 sites that run is not
   started (it would not fit this machine); at 6 sites, where it fits, the estimate came out 5% above the
   measured peak (``benchmarks/results/bench_memory_6sites.json``).

Writes ``benchmarks/results/bench_memory.json`` atomically and prints a summary. Run from the repository root:
``python benchmarks/bench_memory.py [--sites 50] [--rounds 3] [--threads T]`` (about 15 min here at 50 sites)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import provenance  # beside this file: commit, load average, CPU count and date of the run
import psutil

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = ROOT.parent / "shared" / "data" / "brain_tumor_mri" / "brain_tumor_mri_28.npz"
RESULT_PATH = ROOT / "benchmarks" / "results" / "bench_memory.json"
JOB = ROOT / "jobs" / "fedkper_medmnist"
MIB = 2**20
# The paper's largest federation (OrganSMNIST: 50 sites, 10% sampled); alpha 0.1 leaves a 50-site
# brain_tumor_mri_28 partition a site without data.
SITES, ALPHA, ROUNDS = 50, 0.5, 3
# What a FLARE site worker imports before our executor's START_RUN builds the site (the job's client components).
_WORKER_IMPORTS = (
    "nvflare.private.fed.app.simulator.simulator_worker",
    "nvflare.app_opt.tracking.tb.tb_writer",
    "nvflare.app_common.widgets.convert_to_fed_event",
    "fedkper_monai.flare.executor",
)


def _peak_mib() -> float:
    """This process's peak resident set so far (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------- part 1
def probe_site(job_dir: Path, datalist: Path, state_dir: Path) -> dict[str, float]:
    """Run inside a fresh process: peak RSS (MiB) after each phase of a site process's life."""
    import importlib

    peaks = {"python": _peak_mib()}
    for module in _WORKER_IMPORTS:
        importlib.import_module(module)
    peaks["imports"] = _peak_mib()
    from fedkper_monai.flare.jobspec import load_job, site_args
    from fedkper_monai.training.networks import build_network
    from fedkper_monai.training.site import Site, SiteConfig

    settings = {key: value for key, value in site_args(load_job(job_dir)[2]).items() if key not in ("data_root", "demo")}
    config = SiteConfig.from_mapping(settings, source="site executor args")
    site = Site(datalist.stem, datalist, config, state_dir=state_dir)
    peaks["site_setup"] = _peak_mib()
    weights = build_network(**config.network).state_dict()
    site.train_round(weights, round_index=0, version=0, initial=True)
    peaks["first_round"] = _peak_mib()
    return {key: round(value, 1) for key, value in peaks.items()}


def measure_site_process(job_dir: Path, datalist: Path, work: Path) -> dict[str, Any]:
    """Part 1 in a fresh child process (one OpenMP thread, as ``simulate`` gives a site on a small machine)."""
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, str(Path(__file__).resolve()), "--probe-site", str(job_dir), str(datalist), str(work / "site_state")]
    output = subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout
    peaks = json.loads(output.strip().splitlines()[-1])
    return {"site": datalist.stem, "training_samples": len(json.loads(datalist.read_text())["training"]),
            "peak_rss_mib": peaks}


# ----------------------------------------------------------------------------------------------- part 2
class TreeSampler(threading.Thread):
    """Samples the memory of every descendant of this process until stopped (see the module docstring)."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.done = threading.Event()
        self.peak = {"tree_rss_mib": 0.0, "tree_pss_mib": 0.0, "site_processes": 0, "site_process_rss_mib": 0.0,
                     "site_process_pss_mib": 0.0, "server_rss_mib": 0.0, "not_sites_rss_mib": 0.0}
        self.least_available_mib = psutil.virtual_memory().available / MIB
        self.samples = 0
        self._kinds: dict[int, str] = {}

    def _kind(self, process: psutil.Process) -> str:
        if process.pid not in self._kinds:
            command = " ".join(process.cmdline())
            self._kinds[process.pid] = ("site" if "simulator_worker" in command else
                                        "server" if "nvflare.cli simulator" in command else "other")
        return self._kinds[process.pid]

    def sample(self) -> None:
        """One sample of the tree; processes that end meanwhile are skipped."""
        rss = pss = not_sites = 0.0
        sites = 0
        for process in psutil.Process().children(recursive=True):
            try:
                kind = self._kind(process)
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            rss += info.rss / MIB
            pss += getattr(info, "pss", info.rss) / MIB
            if kind == "site":
                sites += 1
                self.peak["site_process_rss_mib"] = max(self.peak["site_process_rss_mib"], info.rss / MIB)
                self.peak["site_process_pss_mib"] = max(self.peak["site_process_pss_mib"], getattr(info, "pss", info.rss) / MIB)
                continue
            not_sites += info.rss / MIB
            if kind == "server":
                self.peak["server_rss_mib"] = max(self.peak["server_rss_mib"], info.rss / MIB)
        self.peak["tree_rss_mib"] = max(self.peak["tree_rss_mib"], rss)
        self.peak["tree_pss_mib"] = max(self.peak["tree_pss_mib"], pss)
        self.peak["not_sites_rss_mib"] = max(self.peak["not_sites_rss_mib"], not_sites)
        self.peak["site_processes"] = max(self.peak["site_processes"], sites)
        self.least_available_mib = min(self.least_available_mib, psutil.virtual_memory().available / MIB)
        self.samples += 1

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()


def measure_federation(data_dir: Path, work: Path, sites: int, threads: int | None, rounds: int, interval: float) -> dict[str, Any]:
    """Part 2: ``fedkper-monai simulate`` of the job (its own process, as a user runs it; ``-t threads``, None:
    simulate's default) while the tree's memory is sampled."""
    from fedkper_monai.launch.simulate import find_metrics, read_round_lines

    workspace = work / f"workspace_n{sites}"
    command = [sys.executable, "-m", "fedkper_monai.cli", "simulate", str(JOB), "-w", str(workspace), "-n", str(sites),
               "--data-root", str(data_dir), "--rounds", str(rounds)] + ([] if threads is None else ["-t", str(threads)])
    sampler = TreeSampler(interval)
    sampler.start()
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True)
    finally:
        sampler.done.set()
        sampler.join()
    wall = time.perf_counter() - started
    lines = read_round_lines(find_metrics(workspace)) if completed.returncode == 0 else []
    if len(lines) != rounds:
        raise RuntimeError(f"{' '.join(command)}: exit code {completed.returncode}, {len(lines)}/{rounds} rounds:\n"
                           f"{completed.stdout[-2000:]}{completed.stderr[-2000:]}")
    used = next(line for line in completed.stdout.splitlines() if " site(s) at a time" in line)
    failed = sum(1 for text in find_metrics(workspace).read_text().splitlines() if '"status": "failed"' in text)
    peak = {key: round(value, 1) if isinstance(value, float) else value for key, value in sampler.peak.items()}
    return {
        "command": "fedkper-monai " + " ".join(command[3:]), "simulate_said": used.strip(),
        "sites": sites, "threads": threads, "rounds": rounds, "sample_fraction": 0.1, "sample_interval_s": interval,
        "samples": sampler.samples, "peak": peak, "failed_site_lines": failed,
        "least_available_mib_on_machine": round(sampler.least_available_mib),
        "round_seconds": [round(float(line["seconds"]), 1) for line in lines],
        "sampled_sites": [line["sampled_sites"] for line in lines],
        "global_acc": [line.get("global_acc") for line in lines],
        "wall_seconds": round(wall, 1),
    }


def summarize(site: dict[str, Any], federation: dict[str, Any]) -> dict[str, Any]:
    """The headline figures and ratios (MiB; one process per site estimated, not run)."""
    peak = federation["peak"]
    per_site = max(peak["site_process_rss_mib"], site["peak_rss_mib"]["first_round"])
    estimate = peak["not_sites_rss_mib"] + federation["sites"] * per_site
    total = psutil.virtual_memory().total / MIB
    return {
        "machine_memory_mib": round(total),
        "site_process_first_round_mib": site["peak_rss_mib"]["first_round"],
        "site_process_imports_mib": site["peak_rss_mib"]["imports"],
        "run_peak_rss_mib": peak["tree_rss_mib"],
        "run_peak_pss_mib": peak["tree_pss_mib"],
        "one_process_per_site_estimate_mib": round(estimate),
        "run_peak_rss_over_machine": round(peak["tree_rss_mib"] / total, 3),
        "one_process_per_site_estimate_over_machine": round(estimate / total, 3),
        "run_peak_rss_over_one_process_per_site": round(peak["tree_rss_mib"] / estimate, 3),
    }


# ----------------------------------------------------------------------------------------------- main
def measure(npz: Path, sites: int, alpha: float, threads: int | None, rounds: int, interval: float = 0.5) -> dict[str, Any]:
    """Both parts on a fresh partition in a temporary folder; returns the result (not written)."""
    from fedkper_monai.data import import_medmnist

    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        data_dir = Path(tmp) / "data"
        import_medmnist(data_dir, npz=npz, num_sites=sites, alpha=alpha, seed=0, progress=False)
        largest = max(data_dir.glob("site-*.json"), key=lambda path: len(json.loads(path.read_text())["training"]))
        print(f"part 1: one site process ({largest.stem}), imports, setup and a first round", flush=True)
        from fedkper_monai.launch.overrides import JobOverrides
        from fedkper_monai.launch.simulate import prepare_job

        job_dir = prepare_job(JOB, Path(tmp) / "probe_ws", JobOverrides(data_root=str(data_dir)), Path(tmp) / "probe_job")
        site = measure_site_process(job_dir, largest, Path(tmp))
        print(f"  {site['peak_rss_mib']}", flush=True)
        print(f"part 2: {sites} sites, 10% sampled, {rounds} rounds, fedkper-monai simulate -t {threads or 'default'}", flush=True)
        federation = measure_federation(data_dir, Path(tmp) / "run", sites, threads, rounds, interval)
        print(f"  {federation['peak']}", flush=True)
    return {"site_process": site, "federation": federation, "summary": summarize(site, federation)}


def _versions() -> dict[str, str]:
    import platform

    import monai
    import nvflare
    import torch

    return {"python": sys.version.split()[0], "torch": torch.__version__, "monai": monai.__version__,
            "nvflare": nvflare.__version__, "machine": f"{platform.machine()} {os.cpu_count()} CPUs"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", default=str(DEFAULT_NPZ), help="MedMNIST-layout .npz (default brain_tumor_mri_28)")
    parser.add_argument("--sites", type=int, default=SITES, help="sites of the federation (default 50, the paper's largest)")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="Dirichlet alpha of the partition (default 0.5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="simulate's -t (default: simulate's own default; 5 for 50 sites on a 24 GB machine)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples of the process tree")
    parser.add_argument("--out", default=str(RESULT_PATH))
    parser.add_argument("--probe-site", nargs=3, metavar=("JOB", "DATALIST", "STATE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_site:  # part 1's child process
        print(json.dumps(probe_site(*(Path(value) for value in args.probe_site))))
        return 0

    from fedkper_monai.io import atomic_write_json

    record = provenance.start("bench_memory")
    started = time.perf_counter()
    result = measure(Path(args.npz), args.sites, args.alpha, args.threads, args.rounds, args.interval)
    result = {
        "benchmark": "peak memory: one simulated site process; a federation in FLARE's simulator with few threads",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "data": str(Path(args.npz).resolve().relative_to(ROOT.parent)) if Path(args.npz).resolve().is_relative_to(ROOT.parent) else args.npz,
        "partition": {"sites": args.sites, "alpha": args.alpha, "seed": 0},
        "versions": _versions(),
        "load_average_start": record["load_average_start"],
        "load_average_end": provenance.finish(record)["load_average_end"],
        "provenance": record,
        "wall_seconds": round(time.perf_counter() - started, 1),
        **result,
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
