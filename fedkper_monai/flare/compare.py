"""``fedkper-monai compare``: run several algorithms through FLARE's simulator on one prepared partition.

Every run uses the same data root, the same seed and therefore the same per-round site sampling (the
controller draws it from ``(seed, round)`` only), so the runs differ only in the algorithm. Each run gets
its own folder, which ``fedkper-monai report`` reads as it is::

    RUNS/<algorithm>/            (with --seeds: RUNS/<algorithm>/seed<k>/)
        job/<algorithm>/         the prepared job (what the simulator ran)
        workspace/               the simulator workspace (server/simulate_job/metrics.jsonl, site checkpoints)
        simulator.log            the simulator's console output
        done.json                written atomically after the run finished; holds the run's settings
    RUNS/centralized/data/       the pooled one-site datalist of the centralized upper bound

Resuming: a run with ``done.json`` and all rounds in its ``metrics.jsonl`` is skipped; a finished run
whose settings differ from the requested ones is an error unless ``overwrite``; an unfinished run is
redone from scratch. All of this is decided before the first simulation starts.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedkper_monai.errors import DataError, FedKPerError
from fedkper_monai.io import atomic_directory, atomic_write_json
from fedkper_monai.flare.jobspec import STANDARD_JOBS, load_job, save_job_configs, write_job
from fedkper_monai.flare.simulate import (
    SimulationOverrides,
    job_component,
    find_metrics,
    prepare_job,
    read_round_lines,
    run_simulator,
)

__all__ = [
    "AlgorithmSpec",
    "ALGORITHMS",
    "CENTRALIZED",
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

DONE_FILE = "done.json"
CENTRALIZED = "centralized"
DEFAULT_ALGORITHMS = ("fedkper", "fedavg", "fedprox", "fedntd", "ditto", "local", "centralized")
_DEFAULT_BASE_JOB = "jobs/fedkper_medmnist"
# What a run folder may hold; anything else means it is not ours and is never deleted.
_RUN_ENTRIES = frozenset({"job", "workspace", "data", "simulator.log", DONE_FILE})
_SETTINGS_VERSION = 1


@dataclass(frozen=True)
class AlgorithmSpec:
    """How one compared algorithm differs from the base job.

    Args:
        name: the name users pass (``--algorithms``), the run folder and the metrics header's ``algorithm``.
        strategy: the learner's local objective (a ``fedkper_monai.training.make_strategy`` name).
        algorithm_args: the strategy's parameters.
        weighting: the aggregator's weighting, ``"score"`` (FedKPer) or ``"samples"`` (FedAvg).
        description: one line for ``--help``.
        pooled: train on all sites' data pooled into one site (the centralized upper bound).
    """

    name: str
    strategy: str
    algorithm_args: Mapping[str, float] = field(default_factory=dict)
    weighting: str = "samples"
    description: str = ""
    pooled: bool = False

    def job_changes(self) -> dict[str, Any]:
        """The :class:`~fedkper_monai.flare.jobspec.JobSettings` fields this algorithm sets."""
        return {"algorithm": self.strategy, "algorithm_args": dict(self.algorithm_args), "weighting": self.weighting}


# Parameters are the ones of the papers' reference settings (DESIGN section 1 and the baselines' papers).
ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec("fedkper", "fedkper", {"tau": 1.0, "lambda_max": 10.0}, "score",
                      "FedKPer: knowledge-personalization loss, score-weighted aggregation"),
        AlgorithmSpec("fedavg", "fedavg", {}, "samples", "FedAvg: cross-entropy, sample-count weights"),
        AlgorithmSpec("fedprox", "fedprox", {"mu": 0.01}, "samples", "FedProx: proximal term mu=0.01"),
        AlgorithmSpec("fedntd", "fedntd", {"tau": 1.0, "beta": 1.0}, "samples",
                      "FedNTD: not-true distillation tau=1, beta=1"),
        # lambda = 1: the value of the Ditto authors' published runs (litian96/ditto, run_*_clean_ditto_lam1.sh).
        AlgorithmSpec("ditto", "ditto", {"mu": 1.0}, "samples",
                      "Ditto: personalized model per site, proximal pull lambda=1 to the global model"),
        AlgorithmSpec("local", "local", {}, "samples", "Local-only: each site trains its own model, no federation"),
        AlgorithmSpec(CENTRALIZED, "fedavg", {}, "samples",
                      "Centralized upper bound: all training data pooled at one site", pooled=True),
        AlgorithmSpec("fedkper_loss_only", "fedkper", {"tau": 1.0, "lambda_max": 10.0}, "samples",
                      "ablation: FedKPer loss, sample-count weights"),
        AlgorithmSpec("fedkper_weighting_only", "fedavg", {}, "score",
                      "ablation: cross-entropy loss, FedKPer score weights"),
    )
}


def parse_algorithms(text: str | Sequence[str]) -> list[AlgorithmSpec]:
    """The specs of a comma-separated list of names (duplicates dropped, order kept).

    Raises:
        FedKPerError: an unknown name; the message lists the valid ones.
    """
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [name.strip() for name in names if name.strip()]
    unknown = [name for name in names if name not in ALGORITHMS]
    if unknown or not names:
        what = f"unknown algorithm(s) {', '.join(map(repr, unknown))}" if unknown else "no algorithm given"
        raise FedKPerError(f"{what}; valid names: {', '.join(ALGORITHMS)}")
    return [ALGORITHMS[name] for name in dict.fromkeys(names)]


def algorithm_job(base: tuple[dict, dict, dict], spec: AlgorithmSpec) -> tuple[dict, dict, dict]:
    """The base job's configs ``(meta, server, client)`` changed into ``spec``'s algorithm (copies).

    Sets the learner's objective and parameters, the aggregator's weighting and the controller's
    ``algorithm`` label (the name reports show); the centralized job runs with one site.
    """
    meta, server, client = copy.deepcopy(base)
    meta["name"] = spec.name
    controller = server["workflows"][0]["args"]
    learner = job_component(client, "learner")["args"]
    aggregator = job_component(server, "aggregator")["args"]
    controller["algorithm"] = spec.name
    learner["algorithm"] = spec.strategy
    learner["algorithm_args"] = dict(spec.algorithm_args)
    aggregator["weighting"] = spec.weighting
    if spec.pooled:
        meta["min_clients"] = 1
    return meta, server, client


def site_datalists(data_root: str | Path) -> list[Path]:
    """``site-1.json .. site-N.json`` of a prepared data root, in site order.

    Raises:
        FedKPerError: none found, or the numbering has a gap (site-k is what FLARE names the k-th site).
    """
    root = Path(data_root)
    found = {path.stem: path for path in root.glob("site-*.json") if path.stem[5:].isdigit()}
    if not found:
        raise FedKPerError(f"{root}: no site-*.json; --data-root must hold the output of `fedkper-monai prepare`")
    expected = [f"site-{k}" for k in range(1, len(found) + 1)]
    missing = [name for name in expected if name not in found]
    if missing:
        raise FedKPerError(f"{root}: site datalists are not numbered 1..{len(found)} (missing {', '.join(missing)})")
    return [found[name] for name in expected]


def pool_sites(data_root: str | Path, out: str | Path) -> Path:
    """Write the centralized federation: one site holding every site's training and local test entries.

    ``out/site-1.json`` gets the union of the sites' ``training`` lists and of their local ``test`` lists;
    ``global_test.json`` and ``global_val.json`` are copied (images stay where they are: paths outside
    ``out`` are written absolute). Built in a temporary folder and moved into place.

    Returns:
        ``out``.

    Raises:
        DataError: the sites disagree on the task (classes, dimensions, size) or share a sample id.
    """
    from fedkper_monai.data import load_datalist, write_datalist

    root = Path(data_root)
    sites = [load_datalist(path) for path in site_datalists(root)]
    first = sites[0]
    training: list[dict] = []
    test: list[dict] = []
    owner: dict[str, Path] = {}
    for site in sites:
        task = (site.num_classes, site.class_names, site.spatial_dims, site.image_size)
        if task != (first.num_classes, first.class_names, first.spatial_dims, first.image_size):
            raise DataError(site.path, f"task differs from {first.path.name} (num_classes, class_names, "
                                       "spatial_dims or image_size): cannot pool the sites")
        for key, pooled in (("training", training), ("test", test)):
            for index, entry in enumerate(site.entries(key)):
                if entry["id"] in owner:
                    raise DataError(site.path, f"id {entry['id']!r} is also in {owner[entry['id']].name}: "
                                               "cannot pool the sites", field=f"{key}[{index}].id")
                owner[entry["id"]] = site.path
                pooled.append(entry)
    with atomic_directory(out, overwrite=True) as staging:
        write_datalist(
            staging / "site-1.json", num_classes=first.num_classes, class_names=first.class_names,
            training=training, test=test, spatial_dims=first.spatial_dims, image_size=first.image_size,
            extra={"_comment_": f"centralized: site-1..site-{len(sites)} of {root.resolve()} pooled"},
        )
        for name in ("global_test.json", "global_val.json"):
            if (root / name).exists():
                write_datalist(staging / name, load_datalist(root / name))
    return Path(out)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _data_fingerprint(data_root: Path) -> dict[str, str]:
    """sha256 of every datalist of the partition: equal fingerprints mean the same partition."""
    files = site_datalists(data_root) + [data_root / n for n in ("global_test.json", "global_val.json")]
    return {path.name: _sha256(path) for path in files if path.exists()}


@dataclass
class CompareRun:
    """One (algorithm, seed) run of a comparison.

    Attributes:
        spec: the algorithm.
        seed: the seed override (None: the base job's seed).
        folder: the run folder.
        settings: everything that determines the run's result (compared with ``done.json``).
        rounds: the number of rounds it runs.
        status: ``"done"`` (skipped), ``"new"``, ``"redo"`` (unfinished) or ``"overwrite"``.
    """

    spec: AlgorithmSpec
    seed: int | None
    folder: Path
    settings: dict[str, Any]
    rounds: int
    status: str = "new"

    @property
    def label(self) -> str:
        return self.spec.name if self.seed is None else f"{self.spec.name} seed {self.seed}"

    @property
    def workspace(self) -> Path:
        return self.folder / "workspace"


def _resolve_base_job(base_job: str | Path, scratch: Path) -> Path:
    """The base job folder; a missing ``jobs/<name>`` of the standard jobs is generated from its spec."""
    path = Path(base_job)
    if path.is_dir():
        return path.resolve()
    if not path.exists() and path.name in STANDARD_JOBS:
        # Same content as the committed folder (a test keeps them equal): works from any directory.
        return write_job(scratch / "base" / path.name, STANDARD_JOBS[path.name])
    raise FedKPerError(f"{path}: base job folder not found (expected meta.json and app/config/)")


def _normalized(configs: tuple[dict, dict, dict]) -> dict[str, Any]:
    """Prepared job configs with machine-specific paths taken out (a moved folder is the same run)."""
    meta, server, client = copy.deepcopy(configs)
    for config in (server, client):
        for component in config.get("components", []):
            if "data_root" in component.get("args", {}):
                component["args"]["data_root"] = "<data_root>"
    return {"meta": meta, "server": server, "client": client}


def _overrides(spec: AlgorithmSpec, data_root: Path, seed: int | None, rounds: int | None,
               sample_fraction: float | None, local_epochs: int | None,
               validate_every: int | None) -> SimulationOverrides:
    return SimulationOverrides(
        rounds=rounds,
        data_root=str(data_root),
        sample_fraction=1.0 if spec.pooled else sample_fraction,
        local_epochs=local_epochs,
        seed=seed,
        validate_every=validate_every,
    )


def _metrics_rounds(workspace: Path) -> int:
    try:
        return len(read_round_lines(find_metrics(workspace)))
    except (FedKPerError, OSError, ValueError):
        return 0


def _check_run_folder(folder: Path) -> None:
    if folder.exists():
        foreign = sorted(entry.name for entry in folder.iterdir() if entry.name not in _RUN_ENTRIES)
        if foreign:
            raise FedKPerError(
                f"{folder}: not a compare run folder (holds {', '.join(foreign[:5])}); choose another --out"
                + (" or pass --seeds as in the earlier run" if any(n.startswith("seed") for n in foreign) else "")
            )


def plan_runs(
    data_root: str | Path,
    algorithms: Sequence[AlgorithmSpec],
    out: str | Path,
    *,
    n_clients: int | None = None,
    seeds: Sequence[int] | None = None,
    rounds: int | None = None,
    sample_fraction: float | None = None,
    local_epochs: int | None = None,
    validate_every: int | None = None,
    base_job: str | Path = _DEFAULT_BASE_JOB,
    overwrite: bool = False,
) -> list[CompareRun]:
    """Decide every run of a comparison before any starts: its folder, settings and status.

    Args:
        data_root: a folder made by ``fedkper-monai prepare`` (site-k.json, global_test.json, ...).
        algorithms: the algorithms, in run order.
        out: the comparison folder ``RUNS``.
        n_clients: number of sites; must equal the number of site datalists (None: take it from them).
        seeds: run each algorithm once per seed into ``<algorithm>/seed<k>`` (None: the base job's seed,
            into ``<algorithm>``).
        rounds, sample_fraction, local_epochs, validate_every: overrides of the base job (None keeps its value).
        base_job: the job folder every algorithm is derived from.
        overwrite: redo finished runs whose settings changed instead of failing.

    Returns:
        The runs, seed by seed, algorithms in the given order within a seed.

    Raises:
        FedKPerError: bad data root or site count, a run folder that is not ours, or (without
            ``overwrite``) finished runs whose settings differ from the requested ones.
    """
    root = Path(data_root).resolve()
    sites = site_datalists(root)
    if n_clients is not None and n_clients != len(sites):
        raise FedKPerError(f"{root} holds {len(sites)} site datalists but -n is {n_clients}: they must match")
    fingerprint = _data_fingerprint(root)
    out = Path(out).resolve()
    runs: list[CompareRun] = []
    conflicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fedkper_compare_plan_") as scratch_name:
        scratch = Path(scratch_name)
        base = load_job(_resolve_base_job(base_job, scratch))
        for seed in seeds if seeds is not None else [None]:
            for spec in algorithms:
                folder = out / spec.name if seed is None else out / spec.name / f"seed{seed}"
                _check_run_folder(folder)
                source = save_job_configs(scratch / "variant" / spec.name, *algorithm_job(base, spec))
                # Prepared exactly as the real run will be; the centralized job sees the same task (the
                # network comes from the data), only its data root differs.
                overrides = _overrides(spec, root, seed, rounds, sample_fraction, local_epochs, validate_every)
                prepared = load_job(prepare_job(source, scratch / "workspace", overrides, scratch / "prepared"))
                settings = {
                    "version": _SETTINGS_VERSION,
                    "algorithm": spec.name,
                    "n_clients": 1 if spec.pooled else len(sites),
                    "data": fingerprint,
                    "job": _normalized(prepared),
                }
                settings = json.loads(json.dumps(settings))
                run = CompareRun(spec, seed, folder, settings, int(prepared[1]["workflows"][0]["args"]["num_rounds"]))
                run.status = _status(run, overwrite, conflicts)
                runs.append(run)
    if conflicts:
        raise FedKPerError(
            "finished runs were made with other settings (pass --overwrite to redo them, or choose another "
            "--out):\n  " + "\n  ".join(conflicts)
        )
    return runs


def _status(run: CompareRun, overwrite: bool, conflicts: list[str]) -> str:
    """``new``, ``redo`` (unfinished), ``done`` (finished, same settings) or ``overwrite``; a finished run
    with other settings is added to ``conflicts`` unless ``overwrite``."""
    done_path = run.folder / DONE_FILE
    if not run.folder.exists():
        return "new"
    try:
        done = json.loads(done_path.read_text())
    except (OSError, json.JSONDecodeError):
        return "redo"  # no (readable) marker: the run stopped before it finished
    previous = done.get("settings") if isinstance(done, dict) else None
    if previous == run.settings:
        # Marked done, but with incomplete or missing metrics it is not a finished run.
        return "done" if _metrics_rounds(run.workspace) == run.rounds else "redo"
    if overwrite:
        return "overwrite"
    changed = _differences(previous if isinstance(previous, dict) else {}, run.settings)
    conflicts.append(f"{run.folder}: {'; '.join(changed[:3]) or 'settings changed'}")
    return "conflict"


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Human-readable ``where: old -> new`` lines for the leaves in which two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            found += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new)) for line in _differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {json.dumps(old)} -> {json.dumps(new)}"]


def _execute(run: CompareRun, data_root: Path, out: Path, threads: int, quiet: bool) -> bool:
    """Run one simulation from scratch in ``run.folder``; write ``done.json`` when all rounds are there."""
    if run.folder.exists():
        shutil.rmtree(run.folder)  # only our own entries (checked by plan_runs)
    run.folder.mkdir(parents=True)
    spec = run.spec
    run_data = data_root
    if spec.pooled:
        run_data = pool_sites(data_root, out / spec.name / "data")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedkper_compare_") as scratch_name:
        scratch = Path(scratch_name)
        # The planned job already carries every override; only its data root is set here.
        job = run.settings["job"]
        source = save_job_configs(scratch / spec.name, job["meta"], job["server"], job["client"])
        prepared = prepare_job(source, run.workspace, SimulationOverrides(data_root=str(run_data)), run.folder / "job")
    log = run.folder / "simulator.log"
    n_clients = int(run.settings["n_clients"])
    code = run_simulator(prepared, run.workspace, n_clients, max(1, min(threads, n_clients)), log_path=log if quiet else None)
    seconds = time.perf_counter() - started
    found = _metrics_rounds(run.workspace)
    if found != run.rounds:
        print(f"{run.label}: FAILED (exit code {code}, {found} of {run.rounds} rounds); see {log} and "
              f"{run.workspace}/server/log.txt", file=sys.stderr)
        return False
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
    algorithms: Sequence[AlgorithmSpec],
    out: str | Path,
    *,
    threads: int = 1,
    quiet: bool = True,
    retries: int = 1,
    **plan_options: Any,
) -> tuple[list[CompareRun], list[CompareRun]]:
    """Plan (see :func:`plan_runs`) and run a comparison, one simulation after another.

    ``plan_options`` are :func:`plan_runs`'s keyword settings (``n_clients``, ``seeds``, ``rounds``, ...).

    Each prepared job names its data root (centralized: ``out/centralized/data``, rebuilt before its run).
    With ``quiet`` the simulator's console output goes to the run's ``simulator.log``. A simulation that
    ends without all its rounds is redone from scratch up to ``retries`` times (FLARE's simulator can lose a
    site's result when it runs fewer threads than sites), then counted as failed and the next run starts.

    Returns:
        ``(runs, failed)``: every planned run and those whose simulation did not finish.
    """
    root = Path(data_root).resolve()
    out = Path(out).resolve()
    runs = plan_runs(root, algorithms, out, **plan_options)
    failed: list[CompareRun] = []
    for index, run in enumerate(runs, start=1):
        prefix = f"[{index}/{len(runs)}] {run.label}:"
        if run.status == "done":
            print(f"{prefix} finished earlier, skipped ({run.folder})", flush=True)
            continue
        reason = {"redo": " (unfinished run, redone from scratch)", "overwrite": " (settings changed, overwriting)"}
        print(f"{prefix} running {run.rounds} rounds{reason.get(run.status, '')} -> {run.folder}", flush=True)
        started = time.perf_counter()
        for attempt in range(retries + 1):
            if attempt:
                print(f"{prefix} retry {attempt} of {retries}, from scratch", flush=True)
            if _execute(run, root, out, threads, quiet):
                print(f"{prefix} done in {time.perf_counter() - started:.0f} s", flush=True)
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


def format_table(runs: Sequence[CompareRun], failed: Sequence[CompareRun] = ()) -> str:
    """One row per run (final and best global accuracy, final mean and worst personalized accuracy);
    with several seeds, one mean ± std row per algorithm after them."""
    keys = ("final_global_acc", "best_global_acc", "mean_personalized_acc", "worst_personalized_acc")
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
            f"{_cell(final.get(key)):>{width}}" for key, width in zip(keys, (8, 8, 9, 10))))
        if id(run) not in failed_ids:
            by_algorithm.setdefault(run.spec.name, []).append(final)
    if any(len(finals) > 1 for finals in by_algorithm.values()):
        rows.append("-" * len(header))
        for name, finals in by_algorithm.items():
            cells = []
            for key, width in zip(keys, (8, 8, 9, 10)):
                values = [f[key] for f in finals if isinstance(f.get(key), (int, float))]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{f'{statistics.mean(values):.3f}±{std:.2f}' if values else '-':>{width}}")
            rows.append(f"{name + f' (mean±std, {len(finals)} seeds)':<34} {'':>6} " + " ".join(cells))
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


def _run(args: argparse.Namespace) -> int:
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
      -n 20 -t 2 --rounds 50 --seeds 0,1,2 --out runs/retina
  fedkper-monai report runs/retina/*/seed* --out reports/retina

algorithms (the same base job, only these change):
{algorithms}

Each run goes to OUT/<algorithm>/ (with --seeds: OUT/<algorithm>/seed<k>/): the prepared job, the simulator
workspace (metrics.jsonl, checkpoints, TensorBoard), simulator.log and done.json. Rerunning the same command
skips finished runs and redoes unfinished ones.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``compare`` to the top-level ``fedkper-monai`` parser."""
    listing = "\n".join(f"  {spec.name:<24} {spec.description}" for spec in ALGORITHMS.values())
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
    parser.add_argument("-t", "--threads", type=int, default=1, help="sites run in parallel (default 1)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--sample-fraction", type=float, help="override the share of sites trained per round")
    parser.add_argument("--local-epochs", type=int, help="override local epochs")
    parser.add_argument("--validate-every", type=int,
                        help="rounds between global-on-local validations of all sites (BwT); 0 disables")
    parser.add_argument("--seeds", metavar="S[,S...]",
                        help="run every algorithm once per seed into OUT/<algorithm>/seed<k> (default: the job's seed)")
    parser.add_argument("--out", required=True, metavar="RUNS", help="comparison folder")
    parser.add_argument("--base-job", default=_DEFAULT_BASE_JOB,
                        help=f"job every algorithm derives from (default {_DEFAULT_BASE_JOB})")
    parser.add_argument("--overwrite", action="store_true", help="redo finished runs whose settings changed")
    parser.add_argument("--retries", type=int, default=1,
                        help="redo a simulation that ended without all its rounds up to this many times (default 1)")
    parser.add_argument("--show-simulator-output", action="store_true",
                        help="print the simulator's output instead of writing it to each run's simulator.log")
    parser.set_defaults(func=_run)
