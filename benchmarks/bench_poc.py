"""Cost of a round in FLARE's POC and in the lab federation against FLARE's simulator and the in-process loop.

POC: ``fedkper-monai poc run``, separate server and site processes on loopback. Lab: ``fedkper-monai deploy
lab``, a provisioned project, each participant in a network namespace of its own. Both against the same rounds
in FLARE's simulator and in the in-process loop of ``bench_round.py``.

Real data: ``fedkper-monai prepare medmnist`` makes a ``--sites``-site Dirichlet(0.1) federation of
``../shared/data/medmnist/retinamnist.npz`` (seed 0) in a temporary folder (brain tumor MRI, bench_round's
data, puts 1680 images on one of four sites: a round there takes minutes on two cores); the job is
``jobs/fedkper_medmnist`` (reference CNN, 5 local epochs, batch 12) with half of the sites sampled per round
and every site validated every round, the same job, data and rounds on every row. Four sites, not
bench_round's twenty: a POC site is two processes (its client and the job's worker), and twenty of them beside
other work do not fit this machine's memory.

Rows (``--rows``, default all): ``inprocess`` (the loop, two passes bracketing the others in time: the
baseline is their per-round mean), ``poc`` (``poc run``), ``simulator`` and ``lab`` (``deploy lab``, root only:
where ``namespaces_available()`` gives a reason, the row is skipped and the reason printed and recorded under
``skipped``). Per-round seconds come from the ``seconds`` of the server's round lines (``metrics.jsonl``) on the
three FLARE paths, and from the loop's own clock in process; round 0 (start-up) is left out. Ratios:
``poc_over_inprocess``, ``simulator_over_inprocess`` (the figure ``bench_round.py`` reports for 20 sites),
``lab_over_inprocess`` and ``lab_over_poc`` (the namespaces' bridge and the provisioned kits over loopback), each
where both of its rows ran.

Writes ``benchmarks/results/bench_poc.json`` atomically (with ``provenance``: commit, load average, CPU count,
date) and prints the ratios. Run from the repository root:
``python benchmarks/bench_poc.py [--sites 4] [--rounds 4] [--rows inprocess,poc,simulator,lab]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_round  # noqa: E402 - the in-process loop and the simulator run live there
import provenance  # noqa: E402 - beside this file: commit, load average, CPU count and date of the run

from fedkper_monai.io import atomic_write_json  # noqa: E402

RESULT_PATH = bench_round.ROOT / "benchmarks" / "results" / "bench_poc.json"
DEFAULT_NPZ = bench_round.ROOT.parent / "shared" / "data" / "medmnist" / "retinamnist.npz"
ROWS = ("inprocess", "poc", "simulator", "lab")
SAMPLE_FRACTION, VALIDATE_EVERY = 0.5, 1


def _round_seconds(metrics: Path) -> list[float]:
    return [float(line["seconds"]) for line in map(json.loads, metrics.read_text().splitlines())
            if "round" in line and "site" not in line]


def _after_warmup(values: list[float]) -> float:
    return float(np.mean(values[1:]))


def run_poc(data_dir: Path, work: Path, sites: int, overrides: Any) -> list[float]:
    """The job through ``fedkper-monai poc run``; per-round seconds from the downloaded metrics.jsonl."""
    from fedkper_monai.launch.poc import PocRun, poc_run

    workspace = work / "poc"
    code = poc_run(PocRun(job=str(bench_round.JOB), sites=sites, data_root=data_dir, workspace=workspace, overrides=overrides))
    if code != 0:
        raise RuntimeError(f"poc run exited with {code}; logs in {workspace / 'logs'}")
    return _round_seconds(workspace / "result" / "workspace" / "metrics.jsonl")


def run_lab(data_dir: Path, work: Path, sites: int, rounds: int) -> list[float]:
    """The job through ``fedkper-monai deploy lab`` (one network namespace per participant); per-round seconds
    from the downloaded metrics.jsonl, as for POC."""
    from fedkper_monai.launch.lab import LabRun, deploy_lab

    workspace = work / "lab"
    overrides = {"rounds": rounds, "sample_fraction": SAMPLE_FRACTION, "validate_every": VALIDATE_EVERY}
    code = deploy_lab(LabRun(job=str(bench_round.JOB), sites=sites, data_root=data_dir.resolve(),
                             workspace=workspace.resolve(), overrides=overrides))
    if code != 0:
        raise RuntimeError(f"deploy lab exited with {code}; logs in {workspace / 'logs'}")
    return _round_seconds(workspace / "result" / "workspace" / "metrics.jsonl")


def run_simulated(job: Path, overrides: Any, work: Path, sites: int) -> list[float]:
    """The job in FLARE's simulator, one process per site; per-round seconds from the server's metrics.jsonl."""
    from fedkper_monai.launch.simulate import find_metrics, prepare_job, read_round_lines, run_simulator

    workspace = work / "simulator"
    prepared = prepare_job(job, workspace, overrides, work / "job_simulator")
    result = run_simulator(prepared, workspace, sites, sites, log_path=work / "simulator.log")
    lines = read_round_lines(find_metrics(workspace))
    if result.code != 0 or len(lines) != overrides.rounds:
        raise RuntimeError(f"simulator exit code {result.code}, {len(lines)}/{overrides.rounds} round lines ({result.cause})")
    return [float(line["seconds"]) for line in lines]


def _rows(text: str) -> list[str]:
    """``--rows``: a comma-separated subset of :data:`ROWS`, kept in the order they run."""
    chosen = {row.strip() for row in text.split(",") if row.strip()}
    unknown = sorted(chosen - set(ROWS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown row(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(ROWS)}")
    return [row for row in ROWS if row in chosen]


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value}: at least 2 (round 0 is excluded from the means)")
    return value


def _skipped(rows: list[str]) -> dict[str, str]:
    """Rows this host cannot run, with why (printed)."""
    if "lab" not in rows:
        return {}
    from fedkper_monai.launch.lab_net import lab_leftovers, namespaces_available

    why_not = namespaces_available()
    others = lab_leftovers() if why_not is None else []
    if others:  # another lab (a test's) would share the cores and the lab tests refuse to start beside this one
        why_not = f"another lab is up on this host ({', '.join(others[:3])})"
    if why_not is None:
        return {}
    print(f"lab row skipped: {why_not}", flush=True)
    return {"lab": why_not}


def measure(args: argparse.Namespace, rows: list[str], work: Path) -> dict[str, list[float]]:
    """Per-round seconds of every row in ``rows``; the in-process loop runs first and last."""
    from fedkper_monai.cli import main as cli
    from fedkper_monai.launch.overrides import JobOverrides
    from fedkper_monai.launch.simulate import prepare_job

    if not rows:
        return {}
    data = work / "data"
    if cli(["prepare", "medmnist", "--npz", args.npz, "--sites", str(args.sites), "--alpha", "0.1", "--seed", "0",
            "--out", str(data), "--no-progress"]) != 0:
        raise RuntimeError(f"fedkper-monai prepare medmnist --npz {args.npz} failed")
    overrides = JobOverrides(rounds=args.rounds, data_root=str(data), sample_fraction=SAMPLE_FRACTION, validate_every=VALIDATE_EVERY)
    seconds: dict[str, list[float]] = {}
    if "inprocess" in rows:
        job = prepare_job(bench_round.JOB, work / "unused", overrides, work / "job")
        seconds["inprocess_before"] = bench_round.run_inprocess(job, work / "inprocess_before", args.rounds)["round_seconds"]
    if "poc" in rows:
        seconds["poc"] = run_poc(data, work, args.sites, JobOverrides(rounds=args.rounds, sample_fraction=SAMPLE_FRACTION,
                                                                      validate_every=VALIDATE_EVERY))
    if "simulator" in rows:
        seconds["simulator"] = run_simulated(bench_round.JOB, overrides, work, args.sites)
    if "lab" in rows:
        seconds["lab"] = run_lab(data, work, args.sites, args.rounds)
    if "inprocess" in rows:
        seconds["inprocess_after"] = bench_round.run_inprocess(job, work / "inprocess_after", args.rounds)["round_seconds"]
    return seconds


def summarize(seconds: dict[str, list[float]]) -> dict[str, Any]:
    """Means after round 0 and the ratios whose two rows ran."""
    if "inprocess_before" in seconds:
        seconds = {**seconds, "inprocess": [float(np.mean(pair)) for pair in zip(seconds["inprocess_before"], seconds["inprocess_after"])]}
    means = {row: _after_warmup(seconds[row]) for row in ROWS if row in seconds}
    pairs = [(row, "inprocess") for row in ("poc", "simulator", "lab")] + [("lab", "poc")]
    return {
        "mean_round_seconds_excluding_round_0": {row: round(mean, 3) for row, mean in means.items()},
        **{f"{a}_over_{b}": round(means[a] / means[b], 3) for a, b in pairs if a in means and b in means},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", default=str(DEFAULT_NPZ))
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=_at_least_two, default=4, help="rounds (round 0 is excluded; at least 2)")
    parser.add_argument("--rows", type=_rows, default=list(ROWS),
                        help=f"comma-separated rows to run (default all: {','.join(ROWS)}); lab needs root")
    parser.add_argument("--out", default=str(RESULT_PATH))
    args = parser.parse_args()
    record = provenance.start("bench_poc")
    skipped = _skipped(args.rows)
    rows = [row for row in args.rows if row not in skipped]
    # bench_round's in-process loop reads its site count from the module.
    bench_round.NUM_SITES = args.sites
    load = {"start": record["load_average_start"]}
    with tempfile.TemporaryDirectory(prefix="fedkper_bench_poc_") as scratch:
        seconds = measure(args, rows, Path(scratch))
    load["end"] = provenance.finish(record)["load_average_end"]
    summary = summarize(seconds)
    result = {
        "job": "jobs/fedkper_medmnist",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "sites": args.sites,
        "sample_fraction": SAMPLE_FRACTION,
        "validate_every": VALIDATE_EVERY,
        "rounds": args.rounds,
        "rows": rows,
        "skipped": skipped,
        "cpu_count": os.cpu_count(),
        "round_seconds": seconds,
        **summary,
        "load_average": load,
        "provenance": record,
    }
    atomic_write_json(args.out, result)
    means = summary["mean_round_seconds_excluding_round_0"]
    ratios = "; ".join(f"{key.replace('_over_', ' over ')}: {value:.2f}x" for key, value in summary.items() if "_over_" in key)
    print(f"{ratios or 'no ratio (fewer than two rows ran)'} ({args.sites} sites, mean round after round 0: "
          + (", ".join(f"{row} {mean:.2f} s" for row, mean in means.items()) or "none")
          + (f"; skipped: {', '.join(f'{row} ({why})' for row, why in skipped.items())}" if skipped else "")
          + f"); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
