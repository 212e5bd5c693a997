"""Cost of a round: FedKPer vs FedAvg local training, and FLARE's simulator vs an in-process loop.

Both parts use real data: ``fedkper-monai prepare medmnist`` makes a 20-site Dirichlet(0.1) federation
of ``../shared/data/brain_tumor_mri/brain_tumor_mri_28.npz`` (seed 0) in a temporary folder.

1. ``fedkper_over_fedavg_local`` (target <= 1.15): ``train_local`` alone, FedKPer over FedAvg, on one site (by
   default the largest site holding at least two classes), with the paper's setting (reference CNN, batch 12,
   5 local epochs, SGD lr 0.01 momentum 0.9 weight decay 1e-5), the same initial weights, the same seeded loader
   (identical batches) and the deterministic ``classification_2d`` transforms, so the teacher logits are cached
   once per round (``cache_teacher_logits=is_deterministic(transform)``). The configurations run interleaved
   (``--reps`` repetitions, the order rotated every repetition) after one untimed warm-up epoch each; medians
   are reported. FedKPer without the cache is measured too, for context (the reference code measured 1.40x).
   Part 1 runs torch with one thread (``--local-threads``) and its headline ratio is of process CPU seconds:
   on two shared cores, two OpenMP threads spin-wait whenever another process holds a core, and the same run
   then takes anywhere from 2 s to 30 s of wall time. Wall-time ratios are recorded beside it.

2. ``flare_over_inprocess`` (target <= 1.25): mean round time of the ``fedkper_medmnist`` job (20 sites,
   10% = 2 sampled per round, validation of all sites every ``--validate-every`` rounds (default: the job's),
   global evaluation) in FLARE's simulator,
   read from the round lines (``seconds``) of the server's ``metrics.jsonl``, over the same round time of a
   minimal in-process loop that does the same work without FLARE's messaging: one
   ``fedkper_monai.training.site.Site`` per site (the site round FLARE's learner runs), ``FedKPerAggregator``,
   ``GlobalEvaluator``, the same seeded site sampling, the executor's validate-then-train call order, the
   server's model save and metrics lines. Round 0 (start-up) is excluded on both sides.
   Two in-process passes bracket the simulator run in time; the baseline is their per-round mean. Both sides
   run with the job's defaults: the in-process loop with torch's thread count (all cores), each simulated
   site with what ``fedkper-monai simulate`` sets (cores // sites OpenMP threads, at least 1;
   ``--site-threads N`` overrides it). The simulator runs with ``-t 20``: one
   long-lived process per site, like the in-process loop's 20 live learners and like real sites (the
   headline). With ``--t1-rounds R > 0`` it also runs ``-t 1`` for context: with fewer threads than sites
   FLARE's simulator starts a fresh worker process for every client turn (nvflare SimulatorClientRunner
   .do_one_task), so every task pays for Python/torch/MONAI imports and a learner setup (~5 s a turn here,
   about 40 turns a round), which measures process start-up, not FLARE's messaging.

3. ``--memory``: peak memory of one site process and of a 50-site federation run, 10% sampled, with
   ``simulate``'s default ``-t`` (``benchmarks/bench_memory.py``, which also runs alone), under ``memory``.

Writes ``benchmarks/results/bench_round.json`` atomically and prints a summary. Other work on the same
cores distorts wall times: the machine's load average is recorded at the start and end of every part.

Run from the repository root:
``python benchmarks/bench_round.py [--reps 5] [--rounds 6] [--validate-every K] [--site-threads N] [--t1-rounds 0] [--memory]``
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
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

from fedkper_monai.data import (
    build_transforms,
    class_counts,
    import_medmnist,
    is_deterministic,
    load_datalist,
    make_dataset,
    make_loader,
)
from fedkper_monai.io import atomic_write_bytes, atomic_write_json
from fedkper_monai.training import build_network, frozen_copy, make_optimizer, make_strategy, train_local

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = ROOT.parent / "shared" / "data" / "brain_tumor_mri" / "brain_tumor_mri_28.npz"
RESULT_PATH = ROOT / "benchmarks" / "results" / "bench_round.json"
JOB = ROOT / "jobs" / "fedkper_medmnist"
NUM_SITES = 20
ALPHA = 0.1
TARGETS = {"fedkper_over_fedavg_local": 1.15, "flare_over_inprocess": 1.25}
# (label, strategy name, cache teacher logits); the cache flag of "fedkper" is is_deterministic(transform).
LOCAL_CONFIGS = (("fedavg", "fedavg", None), ("fedkper", "fedkper", None), ("fedkper_uncached", "fedkper", False))


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT.parent)) if path.is_relative_to(ROOT.parent) else str(path)


# ----------------------------------------------------------------------------------------------- part 1
def _pick_site(data_dir: Path) -> str:
    """The largest site (training samples) whose training split holds at least two classes."""
    best, best_size = None, -1
    for path in sorted(data_dir.glob("site-*.json")):
        datalist = load_datalist(path)
        held = sum(1 for count in class_counts(datalist.training, datalist.num_classes) if count)
        if held >= 2 and len(datalist.training) > best_size:
            best, best_size = path.stem, len(datalist.training)
    if best is None:
        raise RuntimeError(f"{data_dir}: no site holds two classes")
    return best


def bench_local(data_dir: Path, site: str, reps: int, epochs: int, batch_size: int, threads: int) -> dict[str, Any]:
    """Part 1: interleaved ``train_local`` timings of FedAvg, FedKPer (cached teacher) and FedKPer (uncached)."""
    load_start = provenance.load_average()
    datalist = load_datalist(data_dir / f"{site}.json")
    transform = build_transforms("classification_2d", image_size=datalist.image_size, augment=False)
    deterministic = is_deterministic(transform)
    dataset = make_dataset(datalist.training, transform, cache="memory")
    network = {
        "name": "reference_cnn",
        "spatial_dims": datalist.spatial_dims,
        "in_channels": int(dataset[0]["image"].shape[0]),
        "num_classes": datalist.num_classes,
        "image_size": list(datalist.image_size),
    }
    torch.manual_seed(0)
    initial = build_network(**network).state_dict()
    device = torch.device("cpu")

    def run(strategy_name: str, cache: bool | None, run_epochs: int) -> tuple[float, float, Any]:
        model = build_network(**network)
        model.load_state_dict(initial)
        strategy = make_strategy(strategy_name)
        teacher = frozen_copy(model) if strategy.needs_global_model else None
        optimizer = make_optimizer(model, name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-5)
        loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=0)  # identical batches every run
        wall, cpu = time.perf_counter(), time.process_time()
        result = train_local(
            model, loader, strategy, epochs=run_epochs, optimizer=optimizer, device=device, teacher=teacher,
            cache_teacher_logits=deterministic if cache is None else cache,
        )
        return time.perf_counter() - wall, time.process_time() - cpu, result

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _, strategy_name, cache in LOCAL_CONFIGS:  # warm-up: allocator, kernels, the dataset cache
            run(strategy_name, cache, 1)
        wall: dict[str, list[float]] = {label: [] for label, _, _ in LOCAL_CONFIGS}
        cpu: dict[str, list[float]] = {label: [] for label, _, _ in LOCAL_CONFIGS}
        teacher_passes: dict[str, int] = {}
        steps = 0
        for rep in range(reps):
            shift = rep % len(LOCAL_CONFIGS)
            for label, strategy_name, cache in LOCAL_CONFIGS[shift:] + LOCAL_CONFIGS[:shift]:
                wall_seconds, cpu_seconds, result = run(strategy_name, cache, epochs)
                wall[label].append(round(wall_seconds, 4))
                cpu[label].append(round(cpu_seconds, 4))
                teacher_passes[label] = result.teacher_forward_passes
                steps = result.steps
            print(f"  rep {rep + 1}/{reps} (cpu s): " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in cpu.items())
                  + f"; load {provenance.load_average()[0]}", flush=True)
    finally:
        torch.set_num_threads(previous_threads)

    def ratios(times: dict[str, list[float]]) -> dict[str, float]:
        medians = {label: statistics.median(values) for label, values in times.items()}
        out = {f"{label}_over_fedavg": round(medians[label] / medians["fedavg"], 3) for label in ("fedkper", "fedkper_uncached")}
        # Each repetition's runs are seconds apart: a paired ratio cancels slow drifts of the machine's load.
        out.update({
            f"{label}_over_fedavg_paired_median": round(statistics.median(a / b for a, b in zip(times[label], times["fedavg"])), 3)
            for label in ("fedkper", "fedkper_uncached")
        })
        return out

    cpu_medians = {label: statistics.median(values) for label, values in cpu.items()}
    return {
        "site": site,
        "train_samples": len(datalist.training),
        "classes_held": sum(1 for c in class_counts(datalist.training, datalist.num_classes) if c),
        "network": network,
        "batch_size": batch_size,
        "epochs": epochs,
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-5},
        "transforms": "classification_2d (augment=False)",
        "deterministic_transforms": deterministic,
        "steps_per_run": steps,
        "teacher_forward_passes": teacher_passes,
        "repetitions": reps,
        "order": "interleaved, rotated every repetition, after one untimed warm-up epoch per configuration",
        "torch_threads": threads,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "median_cpu_seconds": {k: round(v, 4) for k, v in cpu_medians.items()},
        "median_cpu_ms_per_step": {k: round(1000 * v / steps, 3) for k, v in cpu_medians.items()},
        "median_wall_seconds": {k: round(statistics.median(v), 4) for k, v in wall.items()},
        "cpu_ratios": ratios(cpu),
        "wall_ratios": ratios(wall),
        "load_average_start": load_start,
        "load_average_end": provenance.load_average(),
    }


# ----------------------------------------------------------------------------------------------- part 2
def _component_args(config: dict, component_id: str) -> dict:
    for component in config["components"]:
        if component["id"] == component_id:
            return dict(component["args"])
    raise KeyError(component_id)


def run_inprocess(job_dir: Path, work: Path, rounds: int) -> dict[str, Any]:
    """The job's round loop in this process: the same components and calls, no FLARE messaging.

    Mirrors, one call after another, ``FedKPerController.run`` (sampling; each round, train the sampled
    sites and validate the others on the previous round's model when it is due; global evaluation of that
    model; streaming aggregation; save; metrics lines; the final validation) and the site side of FLARE
    (the learner's ``Site`` set up at the start of the run, validate before train, the learner's
    translation of the site's report, ``client_name`` in the result meta).
    """
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from fedkper_monai.flare.aggregator import FedKPerAggregator
    from fedkper_monai.flare.evaluator import GlobalEvaluator
    from fedkper_monai.flare.jobspec import controller_args, load_job, site_args
    from fedkper_monai.flare.messages import (
        GLOBAL_VERSION_KEY,
        SITE_METRICS_KEY,
        is_initial,
        received_version,
        report_to_flmodel,
    )
    from fedkper_monai.flare.metrics import MetricsFile, RunBook
    from fedkper_monai.flare.persistor import NetworkPersistor
    from fedkper_monai.flare.sitedata import site_datalist_path
    from fedkper_monai.flare.weights import payload_bytes, to_numpy, to_torch
    from fedkper_monai.schedule import RoundRecord, RoundSchedule
    from fedkper_monai.training.site import Site, SiteConfig

    _, server, client = load_job(job_dir)
    controller = dict(controller_args(server))
    learner_args = dict(site_args(client))
    data_root, demo = learner_args.pop("data_root", None), learner_args.pop("demo", False)
    learner_args.pop("analytic_sender_id", None)
    config = SiteConfig.from_mapping(learner_args)
    sites = sorted(f"site-{index}" for index in range(1, NUM_SITES + 1))
    # The same site round FLARE's learner runs, with each site's state in its own folder; set up at the start
    # of the run as FedKPerExecutor does on START_RUN.
    site_rounds = {site: Site(site, site_datalist_path(site, data_root, demo=demo), config, state_dir=work / site) for site in sites}

    def task(site: str, name: str, model: FLModel) -> FLModel:
        weights, version, initial = to_torch(model.params), received_version(model), is_initial(model)
        # Train: FLARE's executor validates first (the same model version: the site evaluates it once).
        metrics = site_rounds[site].evaluate_global(weights, version, initial=initial)
        if name == "train":
            result = report_to_flmodel(site_rounds[site].train_round(weights, model.current_round, version, initial=initial))
        else:
            result = FLModel(metrics=metrics)
        result.meta = dict(result.meta or {}, client_name=site)
        return result

    aggregator = FedKPerAggregator(**_component_args(server, "aggregator"))
    evaluator = GlobalEvaluator(**_component_args(server, "global_evaluator"))
    params = to_numpy(NetworkPersistor(**_component_args(server, "persistor")).initial_state())
    metrics = MetricsFile(work / "server" / "metrics.jsonl")
    book = RunBook()
    round_seconds: list[float] = []
    train_seconds: list[dict[str, float]] = []
    started_all = time.perf_counter()

    def as_task_model(weights: dict, round_index: int, version: int) -> FLModel:
        return FLModel(params_type=ParamsType.FULL, params=weights, current_round=round_index,
                       total_rounds=rounds, meta={GLOBAL_VERSION_KEY: version})

    def close(record: RoundRecord, evaluations: dict[str, dict[str, Any]], seconds: float) -> None:
        for line in book.close_round(record, evaluations, seconds):
            metrics.append(line)
        round_seconds.append(seconds)

    schedule = RoundSchedule(sites, rounds, controller["sample_fraction"], controller["seed"],
                             controller.get("min_sites_per_round", 1), int(controller.get("validate_every", 1)))
    previous: RoundRecord | None = None
    for round_index in range(rounds):
        started = time.perf_counter()
        broadcast = schedule.broadcast(round_index, previous)
        model = as_task_model(params, round_index, round_index)
        aggregator.reset_stats()
        aggregator.set_reference(model.params)
        site_metrics: dict[str, dict[str, Any]] = {}
        for site in broadcast.sampled:
            result = task(site, "train", model)
            site_metrics[site] = dict(result.meta.get(SITE_METRICS_KEY) or {})
            site_metrics[site]["bytes_received"] = payload_bytes(result.params or {})
            aggregator.accept_model(result)
        validations = {site: task(site, "validate", model).metrics or {} for site in broadcast.validators}
        if previous is not None:
            previous.global_eval = evaluator.evaluate(model.params)
            close(previous, schedule.evaluations(previous, validations, site_metrics), started - previous.started)
        params = aggregator.aggregate_model().params
        weights = dict(aggregator.last_weights)
        for site in sorted(site_metrics):
            metrics.append(book.site_train_line(round_index, site, site_metrics[site], weights.get(site, 0.0)))
        buffer = io.BytesIO()
        torch.save(to_torch(params), buffer)  # what NetworkPersistor.save_model writes
        atomic_write_bytes(work / "server" / "global_model.pt", buffer.getvalue())
        previous = schedule.record(broadcast, started, weights, aggregator.last_dropped, payload_bytes(model.params), site_metrics)
        train_seconds.append({site: round(float(m["train_seconds"]), 3) for site, m in site_metrics.items()})
        print(f"  in-process round {round_index}: {broadcast.sampled}, {time.perf_counter() - started:.2f}s", flush=True)
    # The final broadcast: every site validates the last model; the server evaluates it.
    model = as_task_model(params, rounds - 1, rounds)
    validators = schedule.final_broadcast(previous, payload_bytes(model.params))
    validations = {site: task(site, "validate", model).metrics or {} for site in validators}
    previous.global_eval = evaluator.evaluate(model.params)
    close(previous, validations, time.perf_counter() - previous.started)
    return {"round_seconds": round_seconds, "train_seconds": train_seconds, "total_seconds": time.perf_counter() - started_all}


def run_flare(job: Path, overrides: Any, work: Path, threads: int) -> dict[str, Any]:
    """The job in FLARE's simulator (a child process); per-round seconds from the server's metrics.jsonl."""
    from fedkper_monai.launch.simulate import find_metrics, prepare_job, read_round_lines, run_simulator

    workspace = work / f"workspace_t{threads}"
    rounds = overrides.rounds
    prepared = prepare_job(job, workspace, overrides, work / f"job_t{threads}")
    log_path = work / f"simulator_t{threads}.log"
    started = time.perf_counter()
    # run_simulator returns how the watched run ended (a WatchedRun), not a bare exit code.
    code = run_simulator(prepared, workspace, NUM_SITES, threads, log_path=log_path).code
    total = time.perf_counter() - started
    metrics_path = find_metrics(workspace)
    lines = read_round_lines(metrics_path)
    site_lines = [json.loads(text) for text in metrics_path.read_text().splitlines() if '"site"' in text]
    train_seconds = [
        {d["site"]: round(float(d["train_seconds"]), 3) for d in site_lines if d.get("task") == "train" and d["round"] == r}
        for r in range(len(lines))
    ]
    if code != 0 or len(lines) != rounds:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"simulator -t {threads} exit code {code}, {len(lines)}/{rounds} round lines; log tail:\n{tail}")
    for line in lines:
        print(f"  FLARE -t {threads} round {line['round']}: {line['sampled_sites']}, {line['seconds']:.2f}s, "
              f"global acc {line.get('global_acc', float('nan')):.3f}", flush=True)
    return {
        "round_seconds": [float(line["seconds"]) for line in lines],
        "sampled_sites": [line["sampled_sites"] for line in lines],
        "global_acc": [line.get("global_acc") for line in lines],
        "bytes_sent": [int(line["bytes_sent"]) for line in lines],
        "train_seconds": train_seconds,
        "total_seconds": total,
        "exit_code": code,
    }


def _mean_after_warmup(values: list[float]) -> float:
    return float(np.mean(values[1:]))


def bench_flare(data_dir: Path, work: Path, rounds: int, threads: int, t1_rounds: int, validate_every: int | None) -> dict[str, Any]:
    """Part 2: FLARE simulator (-t ``threads``, optionally -t 1) vs the in-process loop, same rounds."""
    from fedkper_monai.flare.jobspec import controller_args, load_job
    from fedkper_monai.launch.overrides import JobOverrides
    from fedkper_monai.launch.simulate import prepare_job

    load_start = provenance.load_average()
    # The in-process loop reads the very job configs the simulator gets (data root and network from the data).
    overrides = JobOverrides(rounds=rounds, data_root=str(data_dir), validate_every=validate_every)
    inprocess_job = prepare_job(JOB, work / "unused_workspace", overrides,
                                work / "job_inprocess")
    # Two in-process passes bracket the simulator run in time, so a change of the machine's load shows.
    passes = [run_inprocess(inprocess_job, work / "inprocess_before", rounds)]
    load_before = provenance.load_average()
    flare = {threads: run_flare(JOB, overrides, work, threads)}
    load_after = provenance.load_average()
    passes.append(run_inprocess(inprocess_job, work / "inprocess_after", rounds))
    if t1_rounds > 0 and threads != 1:
        flare[1] = run_flare(JOB, dataclasses.replace(overrides, rounds=t1_rounds), work, 1)
    # Per round: the mean of the two passes (the same sites train in the same round in both).
    inprocess_rounds = [float(np.mean(values)) for values in zip(*(p["round_seconds"] for p in passes))]

    runs = {}
    for thread_count, run in flare.items():
        count = len(run["round_seconds"])
        baseline = _mean_after_warmup(inprocess_rounds[:count])
        mean = _mean_after_warmup(run["round_seconds"])
        runs[f"t{thread_count}"] = {
            "threads": thread_count,
            "rounds": count,
            "round_seconds": [round(s, 3) for s in run["round_seconds"]],
            "sampled_sites": run["sampled_sites"],
            "global_acc": run["global_acc"],
            "bytes_sent": run["bytes_sent"],
            "mean_round_seconds_excluding_round_0": round(mean, 3),
            "inprocess_mean_same_rounds": round(baseline, 3),
            "flare_over_inprocess": round(mean / baseline, 3),
            "flare_over_inprocess_before": round(mean / _mean_after_warmup(passes[0]["round_seconds"][:count]), 3),
            "flare_over_inprocess_after": round(mean / _mean_after_warmup(passes[1]["round_seconds"][:count]), 3),
            "simulator_wall_seconds": round(run["total_seconds"], 1),
            # train_local seconds of each sampled site (the learner's own timer): compute slowdown vs waiting.
            "site_train_seconds": run["train_seconds"],
            "inprocess_site_train_seconds": [passes[0]["train_seconds"][:count], passes[1]["train_seconds"][:count]],
        }
    return {
        "job": "jobs/fedkper_medmnist",
        "validate_every": controller_args(load_job(inprocess_job)[1])["validate_every"],
        "sites": NUM_SITES,
        "sample_fraction": 0.1,
        "rounds": rounds,
        "headline_threads": threads,
        "inprocess": {
            "passes": [
                {"round_seconds": [round(x, 3) for x in p["round_seconds"]], "wall_seconds": round(p["total_seconds"], 1),
                 "mean_round_seconds_excluding_round_0": round(_mean_after_warmup(p["round_seconds"]), 3)}
                for p in passes
            ],
            "mean_round_seconds_excluding_round_0": round(_mean_after_warmup(inprocess_rounds), 3),
        },
        "simulator": runs,
        "load_average_start": load_start,
        "load_average_before_simulator": load_before,
        "load_average_after_simulator": load_after,
        "load_average_end": provenance.load_average(),
    }


# ----------------------------------------------------------------------------------------------- main
def _versions() -> dict[str, str]:
    import monai
    import nvflare

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "monai": monai.__version__,
        "nvflare": nvflare.__version__,
        "numpy": np.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", default=str(DEFAULT_NPZ), help="MedMNIST-layout .npz (default brain_tumor_mri_28)")
    parser.add_argument("--site", default=None, help="site of part 1 (default: largest site with >= 2 classes)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per configuration in part 1")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--local-threads", type=int, default=1, help="torch threads of part 1 (default 1)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of part 2 (round 0 is excluded)")
    parser.add_argument("--threads", type=int, default=NUM_SITES, help="simulator -t of the headline (default 20)")
    parser.add_argument("--site-threads", type=int, default=None,
                        help="OpenMP threads of each simulated site (default: what `simulate` sets, cores / sites)")
    parser.add_argument("--validate-every", type=int, default=None,
                        help="rounds between validations of all sites in part 2 (default: the job's value)")
    parser.add_argument("--t1-rounds", type=int, default=0,
                        help="rounds of an extra -t 1 run for context (default 0: ~5 s per site turn, minutes per round)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak memory: one site process, 50 sites (bench_memory.py, ~20 min here)")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-flare", action="store_true")
    parser.add_argument("--out", default=str(RESULT_PATH))
    args = parser.parse_args()

    if args.site_threads is not None:  # run_simulator keeps an OMP_NUM_THREADS that is already set
        os.environ["OMP_NUM_THREADS"] = str(args.site_threads)
    record = provenance.start("bench_round")
    result: dict[str, Any] = {
        "benchmark": "round cost: FedKPer vs FedAvg local training; FLARE simulator vs in-process loop",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "data": _relative(Path(args.npz)),
        "partition": {"sites": NUM_SITES, "alpha": ALPHA, "seed": 0},
        "targets": TARGETS,
        "versions": _versions(),
        "load_average_start": record["load_average_start"],
        "provenance": record,
        "simulated_site_omp_threads": os.environ.get("OMP_NUM_THREADS", "cores // min(-t, sites)"),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_round_") as tmp:
        data_dir = Path(tmp) / "data"
        import_medmnist(data_dir, npz=args.npz, num_sites=NUM_SITES, alpha=ALPHA, seed=0, progress=False)
        if not args.skip_local:
            site = args.site or _pick_site(data_dir)
            print(f"part 1: train_local on {site}, {args.reps} interleaved repetitions", flush=True)
            local = bench_local(data_dir, site, args.reps, args.epochs, args.batch_size, args.local_threads)
            result["local"] = local
            result["fedkper_over_fedavg_local"] = local["cpu_ratios"]["fedkper_over_fedavg"]
            result["fedkper_uncached_over_fedavg_local"] = local["cpu_ratios"]["fedkper_uncached_over_fedavg"]
        if not args.skip_flare:
            print(f"part 2: {args.rounds} rounds in-process, FLARE simulator -t {args.threads}, in-process again"
                  + (f", then -t 1 ({args.t1_rounds} rounds)" if args.t1_rounds else ""), flush=True)
            flare = bench_flare(data_dir, Path(tmp) / "flare", args.rounds, args.threads, args.t1_rounds, args.validate_every)
            result["flare"] = flare
            result["flare_over_inprocess"] = flare["simulator"][f"t{args.threads}"]["flare_over_inprocess"]
            if "t1" in flare["simulator"] and args.threads != 1:
                result["flare_t1_over_inprocess"] = flare["simulator"]["t1"]["flare_over_inprocess"]
    if args.memory:
        import bench_memory  # beside this file

        print(f"part 3: peak memory, one site process and {bench_memory.SITES} sites", flush=True)
        result["memory"] = bench_memory.measure(Path(args.npz), bench_memory.SITES, bench_memory.ALPHA, None, bench_memory.ROUNDS)
    result["load_average_end"] = provenance.finish(record)["load_average_end"]
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["met"] = {key: result[key] <= target for key, target in TARGETS.items() if key in result}
    atomic_write_json(args.out, result)

    print(json.dumps(result, indent=2))
    for key, target in TARGETS.items():
        if key in result:
            print(f"{key}: {result[key]:.3f} (target <= {target}) {'met' if result['met'][key] else 'MISSED'}")
    if "memory" in result:
        print("memory: " + ", ".join(f"{key} {value}" for key, value in result["memory"]["summary"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
