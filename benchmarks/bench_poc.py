"""Cost of a round on FLARE's POC deployment (separate server and site processes on loopback) against the
same rounds in FLARE's simulator and in the in-process loop of ``bench_round.py``.

Real data: ``fedkper-monai prepare medmnist`` makes a ``--sites``-site Dirichlet(0.1) federation of
``../shared/data/medmnist/retinamnist.npz`` (seed 0) in a temporary folder (brain tumor MRI, bench_round's
data, puts 1680 images on one of four sites: a round there takes minutes on two cores); the job is
``jobs/fedkper_medmnist`` (reference CNN, 5 local epochs, batch 12) with half of the sites sampled per round
and every site validated every round. Four sites, not bench_round's twenty: a POC site is two processes (its
client and the job's worker), and twenty of them beside other work do not fit this machine's memory.

Per-round seconds come from the ``seconds`` of the server's round lines (``metrics.jsonl``) on both FLARE
paths, and from the loop's own clock in process; round 0 (start-up) is left out. Two in-process passes
bracket the FLARE runs in time; the baseline is their per-round mean. Ratios: ``poc_over_inprocess`` and
``simulator_over_inprocess`` (the figure ``bench_round.py`` reports for 20 sites).

Writes ``benchmarks/results/bench_poc.json`` atomically and prints the ratios. Run from the repository root:
``python benchmarks/bench_poc.py [--sites 4] [--rounds 4]``
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

from fedkper_monai.io import atomic_write_json  # noqa: E402

RESULT_PATH = bench_round.ROOT / "benchmarks" / "results" / "bench_poc.json"
DEFAULT_NPZ = bench_round.ROOT.parent / "shared" / "data" / "medmnist" / "retinamnist.npz"


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", default=str(DEFAULT_NPZ))
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="rounds (round 0 is excluded)")
    parser.add_argument("--out", default=str(RESULT_PATH))
    args = parser.parse_args()
    from fedkper_monai.cli import main as cli
    from fedkper_monai.launch.overrides import JobOverrides
    from fedkper_monai.launch.simulate import prepare_job

    # bench_round's in-process loop reads its site count from the module.
    bench_round.NUM_SITES = args.sites
    with tempfile.TemporaryDirectory(prefix="fedkper_bench_poc_") as scratch:
        work = Path(scratch)
        data = work / "data"
        if cli(["prepare", "medmnist", "--npz", args.npz, "--sites", str(args.sites), "--alpha", "0.1", "--seed", "0",
                "--out", str(data), "--no-progress"]) != 0:
            return 2
        overrides = JobOverrides(rounds=args.rounds, data_root=str(data), sample_fraction=0.5, validate_every=1)
        job = prepare_job(bench_round.JOB, work / "unused", overrides, work / "job")
        load = {"start": bench_round._load()}
        passes = [bench_round.run_inprocess(job, work / "inprocess_before", args.rounds)["round_seconds"]]
        poc = run_poc(data, work, args.sites, JobOverrides(rounds=args.rounds, sample_fraction=0.5, validate_every=1))
        simulator = run_simulated(bench_round.JOB, overrides, work, args.sites)
        passes.append(bench_round.run_inprocess(job, work / "inprocess_after", args.rounds)["round_seconds"])
        load["end"] = bench_round._load()
    inprocess = [float(np.mean(pair)) for pair in zip(*passes)]
    baseline = _after_warmup(inprocess)
    result = {
        "job": "jobs/fedkper_medmnist",
        "sites": args.sites,
        "sample_fraction": 0.5,
        "validate_every": 1,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "round_seconds": {"poc": poc, "simulator": simulator, "inprocess_before": passes[0], "inprocess_after": passes[1]},
        "mean_round_seconds_excluding_round_0": {
            "poc": round(_after_warmup(poc), 3), "simulator": round(_after_warmup(simulator), 3), "inprocess": round(baseline, 3),
        },
        "poc_over_inprocess": round(_after_warmup(poc) / baseline, 3),
        "simulator_over_inprocess": round(_after_warmup(simulator) / baseline, 3),
        "load_average": load,
    }
    atomic_write_json(args.out, result)
    print(f"POC over in-process: {result['poc_over_inprocess']:.2f}x; simulator over in-process: "
          f"{result['simulator_over_inprocess']:.2f}x ({args.sites} sites, mean round after round 0: "
          f"POC {result['mean_round_seconds_excluding_round_0']['poc']:.2f} s, simulator "
          f"{result['mean_round_seconds_excluding_round_0']['simulator']:.2f} s, in process {baseline:.2f} s); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
