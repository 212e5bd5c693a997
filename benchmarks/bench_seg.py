"""Cost of a 3D segmentation round: FedKPer vs FedAvg local training, and the peak memory of one site's round.

Real data: ``fedkper-monai prepare mni152-demo`` (3 sites of crops of the MNI152 T1 template and its tissue maps,
``../shared/data/mni152``, seed 0) in a temporary folder. The site settings are those of
``jobs/fedkper_seg3d_demo`` (read from its client config): a 3D UNet (channels 8-16-32), random 32^3 training
patches (``segmentation_3d`` with ``augment``: two patches per case, half centred on foreground, random flips),
batch 2 cases (4 patches), Dice + CE, Adam, 2 local epochs.

1. ``fedkper_over_fedavg_local`` (target <= 1.4): ``train_local`` alone on site-1, FedKPer over FedAvg. With
   random patches the teacher logits cannot be cached (``is_deterministic`` is false), so FedKPer runs the frozen
   global model once per batch: a forward pass beside the student's forward and backward. Both configurations
   start from the same weights and draw the same patches (the same seeded loader); they run interleaved
   (``--reps`` repetitions, the order alternated) after one untimed warm-up epoch each, torch with one thread
   (``--threads``), and the ratio is of the median process CPU seconds: on two shared cores wall time mostly
   measures the other jobs (wall-time ratios are recorded beside it).
2. ``peak_memory``: one whole site round (``Site.train_round``: evaluate the received model, train, evaluate the
   personalized model and the training cases, score) of FedKPer and of FedAvg, each in a fresh child process.
   The child sets the site up, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs the round and
   reads ``VmHWM``: the peak resident memory during the round, next to the resident memory before it. On CUDA
   ``torch.cuda.max_memory_allocated`` of the round is recorded as well.

Writes ``benchmarks/results/bench_seg.json`` atomically and prints the ratios. Run from the repository root:
``python benchmarks/bench_seg.py [--reps 5] [--epochs 2] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import provenance  # beside this file: commit, load average, CPU count and date of the run
import torch

from fedkper_monai.data import build_transforms, is_deterministic, load_datalist, make_dataset, make_loader
from fedkper_monai.data.mni152 import prepare_mni152_demo
from fedkper_monai.io import atomic_write_json
from fedkper_monai.training import build_network, frozen_copy, make_optimizer, make_strategy, train_local
from fedkper_monai.training.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "data" / "mni152"
RESULT_PATH = ROOT / "benchmarks" / "results" / "bench_seg.json"
JOB = ROOT / "jobs" / "fedkper_seg3d_demo"
SITE = "site-1"
TARGETS = {"fedkper_over_fedavg_local": 1.4}
ALGORITHMS = ("fedavg", "fedkper")


def job_settings() -> dict[str, Any]:
    """The demo job's site settings (its site executor's args), without the data location."""
    from fedkper_monai.flare.jobspec import load_job, site_args

    settings = dict(site_args(load_job(JOB)[2]))
    for key in ("data_root", "demo", "analytic_sender_id"):
        settings.pop(key, None)
    return settings


# ----------------------------------------------------------------------------------------------- part 1
def bench_local(datalist_path: Path, settings: dict[str, Any], reps: int, epochs: int, threads: int) -> dict[str, Any]:
    """Interleaved ``train_local`` timings of FedAvg and FedKPer with the job's random-patch transforms."""
    load_start = provenance.load_average()
    datalist = load_datalist(datalist_path)
    network = dict(settings["network"])
    transform = build_transforms(settings["transforms"], image_size=network["image_size"], augment=True)
    deterministic = is_deterministic(transform)
    dataset = make_dataset(datalist.training, transform, cache="memory")
    task = make_task(settings["task"], **settings.get("task_args", {}))
    torch.manual_seed(0)
    initial = build_network(**network).state_dict()
    device = torch.device("cpu")

    def run(algorithm: str, run_epochs: int) -> tuple[float, float, Any]:
        model = build_network(**network)
        model.load_state_dict(initial)
        strategy = make_strategy(algorithm, **(settings.get("algorithm_args", {}) if algorithm == "fedkper" else {}))
        strategy.set_supervised(task.supervised_criterion())
        teacher = frozen_copy(model) if strategy.needs_global_model else None
        optimizer = make_optimizer(model, name=settings["optimizer"], lr=settings["lr"])
        # The same seed: the same cases in the same order and the same random patches in every run.
        loader = make_loader(dataset, batch_size=settings["batch_size"], shuffle=True, seed=0)
        wall, cpu = time.perf_counter(), time.process_time()
        result = train_local(model, loader, strategy, epochs=run_epochs, optimizer=optimizer, device=device,
                             teacher=teacher, cache_teacher_logits=deterministic, task=task)
        return time.perf_counter() - wall, time.process_time() - cpu, result

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for algorithm in ALGORITHMS:  # warm-up: allocator, kernels, the dataset cache
            run(algorithm, 1)
        wall: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
        cpu: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
        passes: dict[str, int] = {}
        steps = 0
        for rep in range(reps):
            for algorithm in ALGORITHMS if rep % 2 == 0 else ALGORITHMS[::-1]:
                wall_seconds, cpu_seconds, result = run(algorithm, epochs)
                wall[algorithm].append(round(wall_seconds, 4))
                cpu[algorithm].append(round(cpu_seconds, 4))
                passes[algorithm] = result.teacher_forward_passes
                steps = result.steps
            print(f"  rep {rep + 1}/{reps} (cpu s): " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in cpu.items()) + f"; load {provenance.load_average()[0]}", flush=True)
    finally:
        torch.set_num_threads(previous_threads)

    def ratios(times: dict[str, list[float]]) -> dict[str, float]:
        return {
            "fedkper_over_fedavg": round(statistics.median(times["fedkper"]) / statistics.median(times["fedavg"]), 3),
            # Runs of one repetition are seconds apart: the paired ratio cancels slow drifts of the load.
            "fedkper_over_fedavg_paired_median": round(statistics.median(a / b for a, b in zip(times["fedkper"], times["fedavg"])), 3),
        }

    return {
        "site": datalist_path.stem,
        "training_cases": len(datalist.training),
        "patches_per_batch": settings["batch_size"] * int(_transform_setting(settings, "num_patches")),
        "network": network,
        "task_args": settings.get("task_args", {}),
        "optimizer": {"name": settings["optimizer"], "lr": settings["lr"]},
        "epochs": epochs,
        "steps_per_run": steps,
        "deterministic_transforms": deterministic,
        "teacher_forward_passes": passes,
        "repetitions": reps,
        "order": "interleaved, alternated every repetition, after one untimed warm-up epoch per configuration",
        "torch_threads": threads,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "median_cpu_seconds": {k: round(statistics.median(v), 4) for k, v in cpu.items()},
        "median_cpu_ms_per_step": {k: round(1000 * statistics.median(v) / steps, 2) for k, v in cpu.items()},
        "median_wall_seconds": {k: round(statistics.median(v), 4) for k, v in wall.items()},
        "cpu_ratios": ratios(cpu),
        "wall_ratios": ratios(wall),
        "load_average_start": load_start,
        "load_average_end": provenance.load_average(),
    }


def _transform_setting(settings: dict[str, Any], key: str) -> Any:
    """A top-level setting of the job's transform config (the job may override it)."""
    from fedkper_monai.data.pipeline import resolve_transforms_config

    config = json.loads(resolve_transforms_config(settings["transforms"]).read_text())
    return settings.get("transform_settings", {}).get(key, config[key])


# ----------------------------------------------------------------------------------------------- part 2
def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` memory field in KiB (None where there is no such file)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _site_round(datalist: str, settings: dict[str, Any], algorithm: str, epochs: int, threads: int, state_dir: str, queue: Any) -> None:
    """Child process: set one site up, then measure the peak memory of one whole round."""
    from fedkper_monai.training.site import Site, SiteConfig

    torch.set_num_threads(threads)
    values = {**settings, "algorithm": algorithm, "local_epochs": epochs, "device": "auto"}
    if algorithm != "fedkper":
        values["algorithm_args"] = {}
    site = Site(SITE, datalist, SiteConfig.from_mapping(values), state_dir=state_dir)
    torch.manual_seed(0)
    weights = build_network(**settings["network"]).state_dict()
    before = _status_kib("VmRSS")
    try:  # "5" resets the peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    report = site.train_round(weights, round_index=0, version=0)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    queue.put({
        "algorithm": algorithm,
        "rss_before_round_mib": round(before / 1024, 1) if before else None,
        "peak_rss_during_round_mib" if reset else "peak_rss_of_process_mib": round(peak / 1024, 1) if peak else None,
        "cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "device": str(site.device),
        "round_seconds": round(seconds, 2),
        "personalized_dice": round(float(report.metrics["personalized_dice"]), 4) if report else None,
    })


def bench_memory(datalist_path: Path, settings: dict[str, Any], epochs: int, threads: int, work: Path) -> dict[str, Any]:
    """Part 2: one site round of each algorithm in a fresh child process (no memory left from the other)."""
    context = multiprocessing.get_context("spawn")
    rounds = {}
    for algorithm in ALGORITHMS:
        queue = context.Queue()
        child = context.Process(target=_site_round, args=(str(datalist_path), settings, algorithm, epochs, threads, str(work / algorithm), queue))
        child.start()
        rounds[algorithm] = queue.get(timeout=1800)
        child.join()
        print(f"  {algorithm}: {rounds[algorithm]}", flush=True)
    key = next(k for k in rounds["fedkper"] if k.startswith("peak_rss"))
    increase = {a: rounds[a][key] - rounds[a]["rss_before_round_mib"] for a in ALGORITHMS}
    return {
        "rounds": rounds,
        "peak_over_fedavg": round(rounds["fedkper"][key] / rounds["fedavg"][key], 3),
        "round_increase_mib": {a: round(v, 1) for a, v in increase.items()},
        "measure": "VmHWM after resetting it before the round: peak resident memory of the child during the round" if key == "peak_rss_during_round_mib"
        else "VmHWM of the child process (the peak mark could not be reset): includes set-up",
    }


# ----------------------------------------------------------------------------------------------- main
def _versions() -> dict[str, str]:
    import monai

    return {"python": sys.version.split()[0], "torch": torch.__version__, "monai": monai.__version__, "numpy": np.__version__,
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SOURCE), help="folder of the MNI152 files (default ../shared/data/mni152)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per configuration in part 1")
    parser.add_argument("--epochs", type=int, default=None, help="local epochs (default: the job's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", default=str(RESULT_PATH))
    args = parser.parse_args()

    record = provenance.start("bench_seg")
    settings = job_settings()
    epochs = args.epochs or int(settings["local_epochs"])
    result: dict[str, Any] = {
        "benchmark": "3D segmentation round cost: FedKPer vs FedAvg local training; peak memory of one site's round",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "data": "prepare mni152-demo --sites 3 (seed 0) of shared/data/mni152: one template, not a patient cohort",
        "job": "jobs/fedkper_seg3d_demo",
        "site_settings": settings,
        "targets": TARGETS,
        "versions": _versions(),
        "load_average_start": record["load_average_start"],
        "provenance": record,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_seg_") as tmp:
        data_dir = Path(tmp) / "data"
        prepare_mni152_demo(args.source, data_dir, num_sites=3, patch_size=int(settings["network"]["image_size"][0]), seed=0)
        datalist = data_dir / f"{SITE}.json"
        if not args.skip_local:
            print(f"part 1: train_local on {SITE}, {args.reps} interleaved repetitions of {epochs} epochs", flush=True)
            local = bench_local(datalist, settings, args.reps, epochs, args.threads)
            result["local"] = local
            result["fedkper_over_fedavg_local"] = local["cpu_ratios"]["fedkper_over_fedavg"]
        if not args.skip_memory:
            print("part 2: one site round per algorithm, each in a fresh process", flush=True)
            memory = bench_memory(datalist, settings, epochs, args.threads, Path(tmp) / "state")
            result["memory"] = memory
            key = next(k for k in memory["rounds"]["fedkper"] if k.startswith("peak_rss"))
            result["peak_memory_site_round_mib"] = {a: memory["rounds"][a][key] for a in ALGORITHMS}
            result["fedkper_over_fedavg_peak_memory"] = memory["peak_over_fedavg"]
    result["load_average_end"] = provenance.finish(record)["load_average_end"]
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["met"] = {key: result[key] <= target for key, target in TARGETS.items() if key in result}
    atomic_write_json(args.out, result)

    print(json.dumps(result, indent=2))
    for key, target in TARGETS.items():
        if key in result:
            print(f"{key}: {result[key]:.3f} (target <= {target}) {'met' if result['met'][key] else 'MISSED'}")
    if "fedkper_over_fedavg_peak_memory" in result:
        peaks = result["peak_memory_site_round_mib"]
        print(f"peak memory of one site round: fedkper {peaks['fedkper']} MiB, fedavg {peaks['fedavg']} MiB "
              f"(ratio {result['fedkper_over_fedavg_peak_memory']:.3f})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
